"""Method variants (smc_trainer.runs.variants): the paper's OMP/SNIP/Random + RigL rows stay apart in sweeps,
run keys, ledger records, tables and plots; `--methods` specs are validated before anything trains."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
from sparse_helpers import quickstart_config

import smc_trainer.runs.sweep as sweep
import smc_trainer.runs.variants as variants
from smc_trainer.runs.ledger import Ledger
from smc_trainer.runs.report import figure, summarize, to_markdown, write_report
from smc_trainer.runs.run_config import RunOutcome
from smc_trainer.runs.sweep import SweepArguments, execute, make_plan, make_record, run_key, run_sweep
from smc_trainer.runs.variants import (
    MethodSpec,
    VariantAxis,
    args_variant,
    parse_method_spec,
    parse_method_specs,
    record_row,
    row_label,
)

SPARSITIES = (0.2, 0.36)
SEEDS = (1, 2)
INITS = ("omp_before", "snip", "random_before")
ROWS = {"rigl": "OMP + RigL", "rigl:init_method=snip": "SNIP + RigL",
        "rigl:init_method=random_before": "Random + RigL"}
TINY = ["--model_name_or_path", "tiny", "--max_steps", "3", "--num_synthetic_examples", "48",
        "--max_eval_samples", "16", "--per_device_train_batch_size", "8", "--report_to", "none", "--use_cpu"]


def config_for(tmp_path: Path, method: str, sparsity: float, seed: int, *flags: str):
    return quickstart_config(tmp_path, method, sparsity, "--rigl_update_interval", "1", *flags, seed=seed)


def outcome(config, value: float) -> RunOutcome:
    a = config.training_args
    return RunOutcome(method=a.sparse_method, target_sparsity=a.sparsity, mask_sparsity=a.sparsity,
                      measured_sparsity=a.sparsity, metrics={"eval_accuracy": value, "test_accuracy": value},
                      output_dir="o", steps=1, wall_time_s=1.0)


def rigl_records(tmp_path: Path) -> list[dict]:
    """Records as a sweep writes them: dense, and OMP+RigL (the default), SNIP+RigL and Random+RigL."""
    rng = random.Random(0)
    records = []
    for seed in SEEDS:
        config = config_for(tmp_path, "dense", 0.0, seed)
        records.append(make_record(config, outcome(config, rng.uniform(0.5, 0.9)), run_key(config)))
    for init in INITS:
        for sparsity in SPARSITIES:
            for seed in SEEDS:
                config = config_for(tmp_path, "rigl", sparsity, seed, "--rigl_init_method", init)
                records.append(make_record(config, outcome(config, rng.uniform(0.2, 0.9)), run_key(config)))
    return records


def cell_mean(records: list[dict], init: str, sparsity: float) -> float:
    values = [r["metrics"]["test_accuracy"] for r in records
              if r["method"] == "rigl" and r["config"]["training"]["init_method"] == init
              and r["target_sparsity"] == sparsity]
    assert len(values) == len(SEEDS)
    return sum(values) / len(values)


# ---- rows, tables and plots ------------------------------------------------------------------------------


def test_three_rigl_variants_are_three_rows_and_three_lines(tmp_path):
    records = rigl_records(tmp_path)
    assert [r["row"] for r in records if r["target_sparsity"] == 0.2 and r["seed"] == 1] == list(ROWS)
    assert records[-1]["variant"] == {"init_method": "random_before"} and records[2]["variant"] == {}
    (table,) = summarize(records)
    assert table.methods == ["dense", "rigl", "rigl:init_method=random_before", "rigl:init_method=snip"]
    for init, row in zip(INITS, ROWS):
        for s in SPARSITIES:
            mean, _, n = table.cells[(row, s)]
            assert n == len(SEEDS) and mean == pytest.approx(cell_mean(records, init, s))
    rows = [line.split(" | ")[0][2:] for line in to_markdown(table).splitlines()[4:8]]
    assert rows == ["dense", "rigl", "rigl [init_method=random_before]", "rigl [init_method=snip]"]

    lines = [line for line in figure(table).axes[0].get_lines() if line.get_label() != "chance"]
    labels = [line.get_label() for line in lines]
    assert labels == ["dense", "OMP + RigL", "Random + RigL", "SNIP + RigL"]
    colors = [line.get_color() for line in lines]
    assert len(set(colors)) == len(colors)  # every row its own colour, not only a dash pattern


def test_records_without_variant_fields_are_told_apart_by_their_config(tmp_path):
    records = rigl_records(tmp_path)
    old = [{k: v for k, v in r.items() if k not in ("variant", "row")} for r in records]
    assert [record_row(r) for r in old] == [r["row"] for r in records]
    assert summarize(old)[0].cells == summarize(records)[0].cells
    # records without a training config (hand-written, or older still) keep their method as the row, as before
    bare = [{k: v for k, v in r.items() if k not in ("variant", "row", "config")} for r in records]
    (table,) = summarize(bare)
    assert table.methods == ["dense", "rigl"]
    assert to_markdown(table).splitlines()[0].endswith("(test split; checkpoints selected on validation)")


def test_report_of_a_variant_ledger_writes_three_rows(tmp_path):
    ledger = Ledger(str(tmp_path / "ledger.jsonl"))
    for record in rigl_records(tmp_path):
        ledger.append(record)
    paths = write_report(ledger.path, str(tmp_path / "report"))
    markdown = Path(paths["markdown"][0]).read_text(encoding="utf-8")
    assert "| rigl [init_method=snip] | " in markdown and "| rigl [init_method=random_before] | " in markdown
    with open(paths["csv"][0], encoding="utf-8") as fh:
        text = fh.read()
    assert text.count(",rigl:init_method=snip,SNIP + RigL,") == len(SPARSITIES) * len(SEEDS)


def test_paper_labels_of_rows():
    assert {row: row_label(spec.method, dict(spec.variant))
            for row, spec in ((r, parse_method_spec(r)) for r in ROWS)} == ROWS
    assert row_label("set", {"init_method": "snip"}) == "SNIP + SET"
    assert row_label("omp_after", {"prune_modules": "qk"}) == "OMP (After) [qk]"
    assert row_label("gmp", {"distribution": "erk"}) == "GMP (During), ERK"
    assert row_label("gmp", {}) == "GMP (During)" and row_label("lth", {}) == "LTH (After)"
    # a criterion pair with an older alias reads as the alias does; other pairs name their criterion
    assert row_label("omp_after", {"criterion": "wanda"}) == row_label("wanda_after", {}) == "Wanda (After)"
    assert row_label("omp_before", {"criterion": "sparsegpt"}) == "SparseGPT (Before)"
    assert row_label("omp_after", {"criterion": "movement"}) == "OMP (After), movement"
    assert row_label("omp_after", {"criterion": "wanda", "distribution": "owl"}) == "Wanda (After), OWL"


def test_distillation_knobs_make_their_own_rows_relative_to_a_preset(tmp_path):
    """--distill_hardness 0.5 on the gmp_star preset (whose own hardness is 1) is a separate row; the preset at its
    own values, and a plain run at the defaults, keep their keys' older form."""
    star = config_for(tmp_path, "gmp_star", 0.5, 0)
    mixed = config_for(tmp_path, "gmp_star", 0.5, 0, "--distill_hardness", "0.5")
    assert args_variant(star.training_args) == {} and args_variant(mixed.training_args) == {"distill_hardness": 0.5}
    assert run_key(mixed).split("/")[1] == "gmp_star:distill_hardness=0.5" and run_key(star).split("/")[1] == "gmp_star"
    assert row_label("gmp_star", {"distill_hardness": 0.5}) == "GMP* (During), KD hardness 0.5"
    assert run_key(config_for(tmp_path, "gmp", 0.5, 0)).split("/")[1] == "gmp"


# ---- run keys and sweeps --------------------------------------------------------------------------------


def test_run_keys_keep_variants_apart_and_plain_keys_unchanged(tmp_path):
    keys = [run_key(config_for(tmp_path, "rigl", 0.5, 0, "--rigl_init_method", init)) for init in INITS]
    assert [k.split("/")[1] for k in keys] == list(ROWS) and len(set(keys)) == 3
    gmp = run_key(config_for(tmp_path, "gmp", 0.5, 0))
    assert gmp.startswith("quickstart/gmp/0.500000/seed0/")  # a default run's key has its older form
    assert run_key(config_for(tmp_path, "omp_after", 0.5, 0, "--prune_modules", "qk")).startswith(
        "quickstart/omp_after[qk]/0.500000/seed0/")
    gmp = config_for(tmp_path, "gmp", 0.5, 0, "--rigl_init_method", "snip")
    assert run_key(gmp).split("/")[1] == "gmp"  # not its axis


def test_sweep_runs_each_variant_and_skips_only_what_is_done(tmp_path, monkeypatch):
    base = config_for(tmp_path, "dense", 0.0, 0)
    ledger = Ledger(str(tmp_path / "ledger.jsonl"))
    done = base.with_training(sparse_method="rigl", sparsity=0.5)  # OMP + RigL finished earlier
    ledger.append(make_record(done, outcome(done, 0.5), run_key(done)))
    ran = []

    def fake_run(config, run_dir):
        ran.append((config.training_args.sparse_method, config.training_args.rigl_init_method, run_dir))
        return [outcome(config, 0.4)]

    import smc_trainer.runs.executors.node as node  # the in-process executor runs each fine-tune here

    monkeypatch.setattr(node, "run", fake_run)
    plan = make_plan(["quickstart"], list(ROWS), [0.5], [0])
    assert [j.label for j in plan.jobs] == list(ROWS)
    appended = execute(plan, lambda recipe, seed: base, str(tmp_path / "sweep"), ledger, progress=lambda _: None)
    assert [(m, i) for m, i, _ in ran] == [("rigl", "snip"), ("rigl", "random_before")]
    assert Path(ran[0][2]).parent.name == "rigl:init_method=snip"
    assert [r["row"] for r in appended] == ["rigl:init_method=snip", "rigl:init_method=random_before"]
    assert len(ledger.done_keys()) == 3


def test_method_specs_are_validated_with_the_valid_choices():
    assert parse_method_specs("rigl, rigl:init_method=snip,rigl:init_method=omp_before,set:init_method=snip") == [
        MethodSpec("rigl"), MethodSpec("rigl", (("init_method", "snip"),)),
        MethodSpec("set", (("init_method", "snip"),))]
    spec = parse_method_spec("gmp:distribution=erk:prune_modules=qk")
    assert spec.variant == (("prune_modules", "qk"), ("distribution", "erk"))  # declared order
    assert spec.row == "gmp:prune_modules=qk:distribution=erk"
    cases = {
        "rigl:init_method=gmp": "init_method must be one of omp_before, random_before, snip; got 'gmp'",
        "rigl:init=snip": "unknown variant key 'init'; valid keys: init_method, prune_modules, criterion, distribution",
        "gmp:init_method=snip": "init_method applies to rigl, set, not to gmp",
        "dense:distribution=erk": "distribution applies to every method but dense, not to dense",
        "rigl:init_method": "write variants as method:key=value",
        "rigl:init_method=": "init_method has no value",
        "rigl:init_method=snip:init_method=snip": "init_method is given twice",
        "omp_after:prune_modules=qz": "prune_modules must combine the module kinds",
        "gmp:distribution=erk2": "distribution must be one of global, uniform, erk, owl; got 'erk2'",
        "rigl2:init_method=snip": "--sparse_method must be one of",
    }
    for text, message in cases.items():
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_method_spec(text)
    with pytest.raises(ValueError, match="--methods is empty"):
        parse_method_specs(" , ")


def test_bad_variants_fail_before_anything_trains(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "execute", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ValueError, match="init_method must be one of"):
        run_sweep(SweepArguments(methods="rigl:init_method=lth", sweep_dir=str(tmp_path)), TINY)
    with pytest.raises(ValueError, match="sets prune_modules=qk and --module_groups is given too"):
        run_sweep(SweepArguments(methods="omp_after:prune_modules=qk", module_groups="qkv", sweep_dir=str(tmp_path)),
                  TINY)
    # a variant the run itself refuses (SNIP scoring with --snip_batches 0) is caught by building its config
    with pytest.raises(ValueError, match="snip_batches"):
        run_sweep(SweepArguments(methods="rigl:init_method=snip", sweep_dir=str(tmp_path)),
                  [*TINY, "--snip_batches", "0"])


def test_plan_multiplies_variants_by_sparsities_and_module_groups():
    plan = make_plan(["q"], ["rigl", "rigl:init_method=snip", "omp_after:prune_modules=qk"], [0.2, 0.36], [0])
    assert [(j.label, j.sparsities) for j in plan.jobs if j.kind == "single"] == [
        ("rigl", (0.2,)), ("rigl", (0.36,)), ("rigl:init_method=snip", (0.2,)), ("rigl:init_method=snip", (0.36,)),
        ("omp_after[qk]", (0.2,)), ("omp_after[qk]", (0.36,))]
    assert plan.fine_tunes == 1 + 6  # one shared dense fine-tune for omp_after
    grouped = make_plan(["q"], ["rigl:init_method=snip"], [0.2], [0], module_groups=["qk", "qv"])
    assert [j.training_changes() for j in grouped.jobs] == [{"prune_modules": "qk", "rigl_init_method": "snip"},
                                                            {"prune_modules": "qv", "rigl_init_method": "snip"}]


# ---- the axis registry --------------------------------------------------------------------------------


def test_an_axis_is_one_entry_and_missing_flags_are_skipped(tmp_path, monkeypatch):
    snip_batches = VariantAxis("snip_batches", lambda label, m, v: f"{label}, {v} batches", applies_to=("snip",))
    missing = VariantAxis("no_such_flag", lambda label, m, v: label)
    monkeypatch.setattr(variants, "VARIANT_AXES", (*variants.VARIANT_AXES, snip_batches, missing))
    assert "no_such_flag" not in variants.axis_names() and "snip_batches" in variants.axis_names()
    with pytest.raises(ValueError, match="unknown variant key 'no_such_flag'"):
        parse_method_spec("snip:no_such_flag=1")
    with pytest.raises(ValueError, match="snip_batches takes an integer; got 'two'"):
        parse_method_spec("snip:snip_batches=two")
    assert parse_method_spec("snip:snip_batches=4").variant == (("snip_batches", 4),)  # typed from the flag
    records = []
    for batches in (1, 4):
        config = config_for(tmp_path, "snip", 0.5, 0, "--snip_batches", str(batches))
        records.append(make_record(config, outcome(config, 0.3 + batches / 10), run_key(config)))
    (table,) = summarize(records)  # no report code knows about snip_batches
    assert table.methods == ["snip", "snip:snip_batches=4"]
    labels = [line.get_label() for line in figure(table).axes[0].get_lines()]
    assert labels == ["SNIP (Before)", "SNIP (Before), 4 batches", "chance"]


def test_every_declared_axis_with_a_flag_has_the_flags_default():
    from smc_trainer.training.arguments.plugin_arguments import arguments_class

    fields = {f.name: f for f in dataclasses.fields(arguments_class())}  # a plugin another test loaded: its flags
    for axis in variants.axes():
        assert axis.default == fields[axis.flag].default
    assert {"init_method", "prune_modules", "distribution"} <= set(variants.axis_names())
