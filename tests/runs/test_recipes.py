"""Recipes: loading, validation errors that name the bad value, and how flags and config files override them."""

from __future__ import annotations

import json

import pytest
import yaml

from smc_trainer.runs.config import parse_run_config
from smc_trainer.runs.recipes import available_recipes, check_recipe_args, load_recipe, recipe_from_dict


def parse_args(argv):
    c = parse_run_config(argv)
    return c.model_args, c.data_args, c.training_args, c.recipe


def write_yaml(path, data) -> str:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


def test_shipped_recipes_load_and_use_known_flags():
    names = available_recipes()
    assert {"csqa", "quickstart"} <= set(names)
    for name in names:
        recipe = load_recipe(name)
        check_recipe_args(recipe)
        assert recipe.name == name and recipe.metric and recipe.description


def test_csqa_recipe_has_the_paper_settings_and_no_test_split():
    recipe = load_recipe("csqa")
    a = recipe.args
    assert recipe.task == "multiple_choice" and recipe.chance_level == 0.2
    assert a["model_name_or_path"] == "FacebookAI/roberta-large" and a["dataset_name"] == "tau/commonsense_qa"
    assert (a["learning_rate"], a["max_steps"], a["warmup_steps"], a["per_device_train_batch_size"]) == (
        1e-5, 3000, 150, 16)
    assert (a["adam_beta1"], a["adam_beta2"], a["adam_epsilon"], a["weight_decay"]) == (0.9, 0.98, 1e-6, 0.01)
    assert a["lr_scheduler_type"] == "polynomial" and a["max_grad_norm"] == 0.0
    assert recipe.split("validation") == "validation" and recipe.split("test") is None


@pytest.mark.parametrize("name", ["mawps", "asdiv_a", "svamp"])
def test_arithmetic_recipes_prune_and_update_every_1000_steps(name):
    """Every official GTS GMP / RigL script passes --update_frequency 1000 (reference/SMC-BENCH.md 3.2)."""
    args = load_recipe(name).args
    assert (args["prune_frequency"], args["rigl_update_interval"]) == (1000, 1000)
    _, _, training_args, _ = parse_args(["--recipe", name, "--sparse_method", "gmp", "--sparsity", "0.5"])
    assert (training_args.prune_frequency, training_args.rigl_update_interval) == (1000, 1000)


def test_unknown_recipe_lists_valid_names():
    with pytest.raises(ValueError) as err:
        load_recipe("cqsa")
    message = str(err.value)
    assert message.startswith("--recipe must be one of ") and "csqa" in message and "quickstart" in message
    assert message.endswith("or a path to a recipe YAML; got 'cqsa'")


def test_bad_args_key_is_named(tmp_path):
    path = write_yaml(tmp_path / "typo.yaml", {"task": "quickstart", "metric": "accuracy",
                                               "args": {"learning_rat": 0.1}})
    with pytest.raises(ValueError, match="args.learning_rat is not a known flag"):
        load_recipe(path)


def test_unknown_top_level_key_and_malformed_yaml(tmp_path):
    with pytest.raises(ValueError, match="unknown top-level key.*'argz'"):
        recipe_from_dict({"task": "quickstart", "metric": "accuracy", "argz": {}}, name="x")
    with pytest.raises(ValueError, match="missing required key"):
        recipe_from_dict({"task": "quickstart"}, name="x")
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [unclosed\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_recipe(str(bad))
    families = "arithmetic, causal_lm, multiple_choice, protein, quickstart, translation"
    with pytest.raises(ValueError, match=f"task must be one of {families}; got 'translations'"):
        load_recipe(write_yaml(tmp_path / "t.yaml", {"task": "translations", "metric": "bleu"}))


def test_flags_override_recipe_defaults(tmp_path):
    recipe_steps = load_recipe("quickstart").args["max_steps"]
    _, data_args, args, recipe = parse_args(["--learning_rate", "0.5", "--sparsity", "0.2",
                                             "--output_dir", str(tmp_path)])
    assert recipe.name == "quickstart" and data_args.recipe == "quickstart"
    assert args.learning_rate == 0.5 and args.sparsity == 0.2  # flags win
    assert args.max_steps == recipe_steps and args.sparse_method == "gmp"  # recipe fills the rest
    assert args.weight_decay == 0.01


def test_default_output_dir_names_recipe_method_and_sparsity():
    _, _, args, _ = parse_args(["--sparse_method", "dense", "--sparsity", "0"])
    assert args.output_dir.replace("\\", "/") == "smc_outputs/runs/quickstart/dense-0"
    _, _, args, _ = parse_args([])
    assert args.output_dir.replace("\\", "/") == "smc_outputs/runs/quickstart/gmp-0.59"


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_config_file_merges_over_recipe(tmp_path, suffix):
    values = {"recipe": "csqa", "max_steps": 7, "learning_rate": "2e-5", "output_dir": str(tmp_path / "o")}
    path = tmp_path / f"config{suffix}"
    path.write_text(json.dumps(values) if suffix == ".json" else yaml.safe_dump(values), encoding="utf-8")
    model_args, _, args, recipe = parse_args([str(path)])
    assert recipe.name == "csqa" and model_args.model_name_or_path == "FacebookAI/roberta-large"
    assert args.max_steps == 7 and args.learning_rate == 2e-5 and args.adam_beta2 == 0.98
    assert args.output_dir == str(tmp_path / "o")


def test_config_file_unknown_key(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"max_stepz": 3})
    with pytest.raises(ValueError, match="unknown flag.*max_stepz"):
        parse_args([path])
