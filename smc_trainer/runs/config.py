"""Turning command-line flags (or one JSON/YAML config file) into a `RunConfig`.

Precedence: flags (or the config file) > the recipe's `args` > the dataclass defaults. The recipe
is found first (`--recipe`, or the file's `recipe` key) because it supplies the defaults.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from smc_trainer.errors import MissingFileError, UsageError
from smc_trainer.methods import get_method_class, method_names
from smc_trainer.plugins import load_plugins
from smc_trainer.release.provenance import override_flags
from smc_trainer.runs.help_groups import group_flags
from smc_trainer.runs.presets import given_flags, is_preset, load_preset, preset_names
from smc_trainer.runs.recipes import Recipe, did_you_mean, load_recipe
from smc_trainer.runs.run_config import RunConfig
from smc_trainer.training.arguments import DataArguments, ModelArguments
from smc_trainer.training.arguments.causal_lm import causal_lm_defaults
from smc_trainer.training.arguments.plugin_arguments import arguments_class
from smc_trainer.training.arguments.renamed import canonical_argv, canonical_values
from smc_trainer.training.calibration_file import check_task_support

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
# argparse prints the usage above each of its errors: one line, not the hundreds of flags (--help lists them)
USAGE = ("run_smc.py [sweep | report | push] [--recipe NAME] [--sparse_method NAME] [FLAG VALUE ...] "
         "(--help: the flags; --help-all: every TrainingArguments flag too)")
DEFAULT_RECIPE = DataArguments.recipe
CAUSAL_LM_TASK = "causal_lm"


def make_parser(description: str | None = None, argv: list[str] | None = None) -> HfArgumentParser:
    """The run's flags: model, data, and training arguments with the flags of every registered method's and
    criterion's config, the plugins' too (those named by `--plugins` in `argv` are loaded first)."""
    if argv is not None:
        load_plugins_of(argv)
    types = [ModelArguments, DataArguments, arguments_class()]
    parser = HfArgumentParser(types, description=description, prog="run_smc.py", usage=USAGE)
    group_flags(parser, types)  # --help by method and axis; --help-all adds every TrainingArguments flag
    return parser


def load_plugins_of(argv: list[str]) -> None:
    """Import the plugins `--plugins` names in `argv` (before any flag is parsed: they add flags and names)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugins", default=None)
    load_plugins(pre.parse_known_args(argv)[0].plugins)


def read_config_file(path: str) -> dict[str, Any]:
    """Flag values from a .json/.yaml config file (YAML is a superset of JSON)."""
    if not Path(path).is_file():
        raise MissingFileError(f"config file {path!r} does not exist")
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UsageError(f"config file {path} is not valid YAML/JSON: {err}") from err
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a mapping of flag names to values")
    return data


def is_config_file(argv: list[str]) -> bool:
    return len(argv) == 1 and argv[0].endswith(CONFIG_SUFFIXES) and not argv[0].startswith("-")


def parse_run_config(argv: list[str], description: str | None = None) -> RunConfig:
    """Flags (or one config file) over recipe defaults over dataclass defaults, plus the recipe itself."""
    load_plugins_of(argv)  # a plugin's method or criterion is a valid name below, its flags are flags
    argv = canonical_argv(argv)  # a renamed flag's former name (--init_method) warns once and reads as the new one
    parser = make_parser(description)
    file_values: dict[str, Any] = {}
    if is_config_file(argv):
        file_values = read_config_file(argv[0])
        load_plugins(file_values.get("plugins"))
        file_values = canonical_values(file_values, f"config file {argv[0]}")
        parser = make_parser(description)  # with the flags of the file's plugins
        dests = [a.dest for a in parser._actions]
        unknown = sorted(set(file_values) - set(dests))
        if unknown:
            raise UsageError(f"config file {argv[0]}: unknown flag(s) {', '.join(unknown)}"
                             f"{did_you_mean(unknown[0], dests)}; see run_smc.py --help")
        check_values(file_values, parser, f"config file {argv[0]}: ")
        argv = []
        recipe_name = str(file_values.get("recipe", DEFAULT_RECIPE))
        method_name = file_values.get("sparse_method")
        flags = override_flags(file_values)
        given = set(file_values)
    else:
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--recipe", default=DEFAULT_RECIPE)
        pre.add_argument("--sparse_method", default=None)
        known = pre.parse_known_args(argv)[0]
        recipe_name, method_name = known.recipe, known.sparse_method
        flags = tuple(argv)
        given = given_flags(flags)
    recipe = load_recipe(recipe_name)
    check_values(recipe.args, parser, f"recipe {recipe.path or recipe.name}: args.")
    method_name = method_name or recipe.args.get("sparse_method")
    check_method_name(method_name)
    # a method preset (recipes/methods/<name>.yaml): its flags sit between the recipe's and the user's
    preset = load_preset(method_name).overrides(given) if is_preset(method_name) else {}
    # defaults pass through argparse's type conversion, so "1e-5" from YAML still becomes a float
    parser.set_defaults(**{**recipe.args, **preset, **file_values})
    namespace = parser.parse_args(argv)
    if namespace.output_dir is None:
        namespace.output_dir = default_output_dir(recipe, method_name or namespace.sparse_method, namespace.sparsity)
    if preset:
        check_preset_sparsity(method_name, preset["sparse_method"], namespace.sparsity)
        namespace.sparse_method, namespace.method_preset = preset["sparse_method"], method_name
    try:
        model_args, data_args, training_args = parser.parse_dict(vars(namespace))
    except UsageError:
        raise
    except ValueError as err:  # transformers' own checks of TrainingArguments: about the flags too
        raise UsageError(str(err)) from err
    if training_args.calibration_file is not None:  # the file itself was checked with the flags
        check_task_support(recipe.task)
    check_causal_lm_flags(training_args, recipe)
    return RunConfig(model_args, data_args, training_args, recipe, flags=flags)


def check_causal_lm_flags(training_args: Any, recipe: Recipe) -> None:
    """The causal-LM flags (--torch_dtype, --perplexity_text, ...) off their defaults only for a causal_lm recipe:
    another task would ignore them silently."""
    if recipe.task == CAUSAL_LM_TASK:
        return
    changed = [name for name, default in causal_lm_defaults().items() if getattr(training_args, name) != default]
    if changed:
        raise UsageError(f"--{changed[0]} is a flag of the causal_lm task (the llm_* recipes); recipe {recipe.name!r} "
                         f"is a {recipe.task} task, which does not read it: leave it out, or run an llm_* recipe")


def check_method_name(name: str | None) -> None:
    """--sparse_method names a registered method or a method preset (recipes/methods/); the error lists both."""
    if name is None or name in method_names() or is_preset(name):
        return
    raise UsageError(f"--sparse_method must be one of {', '.join(method_names())}, or a method preset "
                     f"({', '.join(preset_names()) or 'none'}); got {name!r}{did_you_mean(name, all_method_names())}")


def all_method_names() -> list[str]:
    return [*method_names(), *preset_names()]


def check_preset_sparsity(preset: str, method: str, sparsity: float) -> None:
    """A sparse preset at --sparsity 0 would train a dense model under the preset's name (the preset's own name in
    the error, not only its base method's)."""
    if sparsity == 0.0 and get_method_class(method).phase != "dense":
        raise UsageError(f"--sparse_method {preset} (a preset of {method}) at --sparsity 0 prunes nothing: its run "
                         "would be a dense model labelled as the preset; pass --sparsity in (0, 1), or "
                         "--sparse_method dense for the dense baseline")


TYPE_WORDS = {"float": "a number", "int": "an integer", "string_to_bool": "true or false"}


def check_values(values: dict[str, Any], parser: HfArgumentParser, where: str) -> None:
    """Flag values a recipe or config file gives: each of its flag's type (`learning_rate: fast` is refused,
    naming the key) and one of its choices. Command-line strings are argparse's to check."""
    actions = {a.dest: a for a in parser._actions}
    for key, value in values.items():
        action = actions.get(key)
        if action is None or value is None or action.type is None:
            continue
        many = action.nargs in ("+", "*")
        for item in value if many and isinstance(value, list) else [value]:
            check_value(item, action, f"{where}{key}")


def check_value(item: Any, action: argparse.Action, name: str) -> None:
    """One value of a number, boolean or closed-choice flag (other flags, e.g. a dict-valued one, are left to
    the argument dataclasses)."""
    kind = getattr(action.type, "__name__", "")
    if kind not in TYPE_WORDS and not action.choices:
        return
    expected = TYPE_WORDS.get(kind, "a single value")
    try:
        if isinstance(item, (list, dict)) or (kind in ("float", "int") and isinstance(item, bool)):
            raise ValueError(item)
        converted = action.type(item)
        if kind == "int" and float(item) != converted:
            raise ValueError(item)
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        raise UsageError(f"{name} must be {expected}; got {item!r}") from None
    choices = [str(c) for c in action.choices or ()]
    if choices and str(converted) not in choices and str(item) not in choices:
        raise UsageError(f"{name} must be one of {', '.join(choices)}; got {item!r}{did_you_mean(str(item), choices)}")


def default_output_dir(recipe: Recipe, method: str, sparsity: float) -> str:
    return os.path.join("smc_outputs", "runs", recipe.name, f"{method}-{sparsity:g}")
