"""Method presets (recipes/methods/*.yaml): resolved where method names are, user flags win, labelled in reports;
the new flags leave existing ledger keys unchanged."""

from __future__ import annotations

import pytest

from smc_trainer.runs.config import parse_run_config
from smc_trainer.runs.presets import load_preset, method_label, preset_names


def test_presets_ship_and_name_registered_methods():
    assert {"obert", "gmp_star", "obert_gradual"} <= set(preset_names())
    assert load_preset("obert").method == "lrr" and load_preset("gmp_star").method == "gmp"
    assert method_label("obert") == "oBERT (LRR + KD)" and method_label("gmp") is None


def test_sparse_method_preset_expands_with_user_flags_winning(tmp_path):
    config = parse_run_config(["--sparse_method", "obert", "--sparsity", "0.59", "--distill_temperature", "3",
                               "--output_dir", str(tmp_path / "o")])
    a = config.training_args
    assert (a.sparse_method, a.method_preset, a.criterion) == ("lrr", "obert", "obert")
    assert (a.obert_block_size, a.obert_num_grads, a.obert_update) == (1, 0, False)  # SMC-Bench App. C
    assert a.distill_teacher == "dense" and a.distill_temperature == 3.0
    assert not a.prune_embeddings and not a.prune_heads
    star = parse_run_config(["--sparse_method", "gmp_star", "--sparsity", "0.79"]).training_args
    assert star.lr_rewind and star.gmp_initial_fraction == 0.7 and star.method_preset == "gmp_star"
    assert "gmp_star" in star.output_dir


def test_preset_in_a_sweep_plan_and_record(tmp_path):
    from smc_trainer.runs.presets import method_changes
    from smc_trainer.runs.run_config import RunOutcome
    from smc_trainer.runs.sweep import make_plan, make_record, run_key

    plan = make_plan(["quickstart"], ["gmp", "obert", "gmp_star"], [0.59], [0])
    kinds = {j.method: j.kind for j in plan.jobs}
    assert kinds == {"dense": "dense", "gmp": "single", "obert": "chain", "gmp_star": "single"}
    base = parse_run_config(["--output_dir", str(tmp_path), "--distill_hardness", "0.5"])
    config = base.with_training(**method_changes(base, "gmp_star"), sparsity=0.59)
    assert config.training_args.distill_hardness == 0.5  # the sweep's own flag beats the preset's
    key = run_key(config)
    assert "/gmp_star:distill_hardness=0.5/" in key  # another hardness than the preset's: its own row
    outcome = RunOutcome("gmp", 0.59, 0.59, 0.59, {}, str(tmp_path), 1, 0.0)
    record = make_record(config, outcome, key)
    assert record["method"] == "gmp_star" and record["phase"] == "during"
    plain = base.with_training(**method_changes(base, "gmp"), sparsity=0.59)
    assert "/gmp:distill_hardness=0.5/" in run_key(plain) and run_key(plain) != key


@pytest.mark.parametrize("flags", [[], ["--sparse_method", "gmp", "--sparsity", "0.5"]])
def test_new_flags_at_their_defaults_leave_ledger_keys_unchanged(flags):
    from smc_trainer.runs.dense_cache import config_fingerprint

    training = config_fingerprint(parse_run_config(flags), include_sparse=True)["training"]
    new = {"criterion", "obert_block_size", "distill_teacher", "lr_rewind", "gmp_initial_fraction", "plugins",
           "method_preset", "obert_dtype", "distill_temperature", "calibration_memory"}
    assert not new & set(training)
    changed = config_fingerprint(parse_run_config([*flags, "--distill_teacher", "dense"] if flags else
                                                  ["--sparse_method", "gmp", "--distill_teacher", "dense"]),
                                 include_sparse=True)["training"]
    assert changed["distill_teacher"] == "dense"
