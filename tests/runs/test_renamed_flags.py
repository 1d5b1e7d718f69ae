"""RigL/SET's flags carry the `rigl_` prefix; their former names (`--init_method`, `--update_interval`, ...) stay
deprecated aliases that warn once, and every key, row id and fingerprint is the same under either name. The
task-model settings that left DataArguments are still keyed with the data flags."""

from __future__ import annotations

import logging

import pytest

from smc_trainer.errors import UsageError
from smc_trainer.runs.dense_cache import DenseCache, config_fingerprint
from smc_trainer.runs.pipeline import dense_stage_config
from smc_trainer.runs.recipes import load_recipe
from smc_trainer.runs.sweep import run_key
from smc_trainer.runs.variants import parse_method_spec, row_label
from smc_trainer.training.arguments import renamed
from smc_trainer.training.arguments.renamed import canonical_values, renamed_flags
from tests.sparse_helpers import quickstart_config

FORMER = ["--init_method", "snip", "--update_interval", "7", "--drop_fraction", "0.3", "--update_end", "0.8",
          "--drop_fraction_floor", "0.01"]
CURRENT = ["--rigl_init_method", "snip", "--rigl_update_interval", "7", "--rigl_drop_fraction", "0.3",
           "--rigl_update_end", "0.8", "--rigl_drop_fraction_floor", "0.01"]


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """Each test sees the warnings a fresh process would (they are logged once per process)."""
    monkeypatch.setattr(renamed, "_WARNED", set())


def test_the_renamed_flags_are_rigl_s_five():
    assert renamed_flags() == {"update_interval": "rigl_update_interval", "drop_fraction": "rigl_drop_fraction",
                               "update_end": "rigl_update_end", "drop_fraction_floor": "rigl_drop_fraction_floor",
                               "init_method": "rigl_init_method"}


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_former_and_current_flags_parse_to_the_same_arguments_and_keys(tmp_path, method):
    old = quickstart_config(tmp_path, method, 0.5, *FORMER)
    new = quickstart_config(tmp_path, method, 0.5, *CURRENT)
    args = new.training_args
    assert (args.rigl_init_method, args.rigl_update_interval, args.rigl_drop_fraction, args.rigl_update_end,
            args.rigl_drop_fraction_floor) == ("snip", 7, 0.3, 0.8, 0.01)
    assert old.training_args.to_dict() == args.to_dict()
    assert run_key(old) == run_key(new)
    assert run_key(new).split("/")[1] == f"{method}:init_method=snip"  # the row id keeps the former name
    assert DenseCache(str(tmp_path)).key(dense_stage_config(old)) == DenseCache(str(tmp_path)).key(
        dense_stage_config(new))


def test_fingerprints_name_a_renamed_flag_by_its_former_name(tmp_path):
    training = config_fingerprint(quickstart_config(tmp_path, "rigl", 0.5, *CURRENT), include_sparse=True)["training"]
    assert (training["init_method"], training["update_interval"], training["drop_fraction_floor"]) == ("snip", 7, 0.01)
    assert not any(name.startswith("rigl_") for name in training)


def test_a_former_flag_warns_once_per_process(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="smc_trainer"):
        quickstart_config(tmp_path, "rigl", 0.5, "--init-method=snip")  # the dashed form, with `=`
        quickstart_config(tmp_path, "rigl", 0.5, "--init_method", "random_before")
        quickstart_config(tmp_path, "rigl", 0.5, "--rigl_init_method", "snip")
    lines = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert lines == ["--init_method is deprecated and will be removed; use --rigl_init_method (same meaning, same "
                     "keys and results)"]


def test_a_recipe_may_use_a_former_name_but_not_both(tmp_path, caplog):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("task: quickstart\nmetric: accuracy\nargs:\n  update_interval: 9\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="smc_trainer"):
        loaded = load_recipe(str(recipe))
    assert loaded.args == {"rigl_update_interval": 9}
    assert [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()] == [
        f"recipe {recipe}: --update_interval is deprecated and will be removed; use --rigl_update_interval (same "
        "meaning, same keys and results)"]
    config = quickstart_config(tmp_path, "rigl", 0.5, recipe=str(recipe))
    assert config.training_args.rigl_update_interval == 9
    with pytest.raises(UsageError, match="update_interval and rigl_update_interval are the same flag"):
        canonical_values({"update_interval": 9, "rigl_update_interval": 9}, "recipe x")


def test_variant_keys_accept_both_names_and_keep_the_row_and_label():
    former, current = parse_method_spec("rigl:init_method=snip"), parse_method_spec("set:rigl_init_method=snip")
    assert former.variant == current.variant == (("init_method", "snip"),)
    assert (former.row, current.row) == ("rigl:init_method=snip", "set:init_method=snip")
    assert (row_label("rigl", dict(former.variant)), row_label("set", dict(current.variant))) == (
        "SNIP + RigL", "SNIP + SET")


def test_task_model_settings_are_keyed_with_the_data_flags(tmp_path):
    """The arithmetic, protein and translation model settings are training fields now; their fingerprint entries
    stay under "data" (always present, in the dense-cache key too), where they were when keys were recorded."""
    config = quickstart_config(tmp_path, "omp_after", 0.5, "--gts_hidden_size", "64",
                               "--protein_head_learning_rate", "0.02", "--translation_dropout", "0.3")
    assert config.training_args.gts_hidden_size == 64 and not hasattr(config.data_args, "gts_hidden_size")
    dense = config_fingerprint(dense_stage_config(config))
    moved = {"encoder_learning_rate": 8e-6, "lr_step_epochs": 20, "lr_step_gamma": 0.5, "gts_hidden_size": 64,
             "gts_num_layers": 2, "gts_dropout": 0.5, "gts_encoder_dropout": 0.0, "protein_head_learning_rate": 0.02,
             "protein_lr_schedule": "one_cycle", "protein_dropout": None, "translation_dropout": 0.3,
             "translation_attention_dropout": None}
    assert {name: dense["data"][name] for name in moved} == moved
    assert not set(moved) & set(dense["training"])


def test_a_config_file_may_use_a_former_name(tmp_path):
    from smc_trainer.runs.config import parse_run_config

    path = tmp_path / "run.yaml"
    path.write_text(f"recipe: quickstart\nsparse_method: rigl\nsparsity: 0.5\ninit_method: snip\n"
                    f"output_dir: {tmp_path / 'out'}\n", encoding="utf-8")
    config = parse_run_config([str(path)])
    assert config.training_args.rigl_init_method == "snip"
    flags = quickstart_config(tmp_path, "rigl", 0.5, "--rigl_init_method", "snip", seed=config.training_args.seed)
    assert run_key(config) == run_key(flags)
