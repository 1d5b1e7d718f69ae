"""Recipes: one YAML per benchmark row (task x dataset x model) with the paper's hyper-parameters.

A recipe names the task family that builds data, model and metric, and gives defaults for any
CLI flag (`args`); flags given on the command line override them. Recipes live in the
repository's `recipes/` folder; any other YAML file can be passed by path.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from smc_trainer.errors import UsageError


def _recipes_dir() -> Path:
    """The repository's recipes/ (editable install), else the copy a regular install put under sys.prefix."""
    beside = Path(__file__).resolve().parents[2] / "recipes"
    installed = Path(sys.prefix) / "share" / "smc-trainer" / "recipes"
    return beside if beside.is_dir() or not installed.is_dir() else installed


RECIPES_DIR = _recipes_dir()
RECIPE_KEYS = ("task", "description", "metric", "chance_level", "splits", "args", "subsets", "folds")
REQUIRED_KEYS = ("task", "metric")
SPLIT_NAMES = ("train", "validation", "test")
# flags that choose the recipe or the run's place cannot come from a recipe
FORBIDDEN_ARGS = ("recipe",)


@dataclass
class Recipe:
    """A parsed recipe. `splits` maps our split names to the dataset's (None: the split is absent)."""

    name: str
    task: str
    metric: str
    description: str = ""
    chance_level: float | None = None
    splits: dict[str, str | None] = field(default_factory=dict)
    args: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    subsets: list[str] = field(default_factory=list)
    """Named evaluation subsets reported separately (RACE: middle, high): metrics `<split>_<subset>_<metric>`."""
    folds: int | None = None
    """Cross-validation folds (MAWPS, ASDiv-A: 5); the reported score pools all folds' examples."""

    @property
    def cli_name(self) -> str:
        """What `--recipe` needs to find this very file: the name of a shipped recipe, else the path."""
        if self.path is None or (RECIPES_DIR / f"{self.name}.yaml").resolve() == Path(self.path).resolve():
            return self.name
        return self.path

    def split(self, ours: str) -> str | None:
        """The dataset's name for our split `ours` (train/validation/test); the same name when unmapped."""
        return self.splits.get(ours, ours)


def available_recipes() -> list[str]:
    """Names of the recipes shipped in `recipes/`, sorted."""
    if not RECIPES_DIR.is_dir():
        return []
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str) -> Recipe:
    """Load a shipped recipe by name, or any recipe YAML by path, and check its task and flag names."""
    from smc_trainer.tasks import task_names

    path = _resolve(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UsageError(f"recipe {path} is not valid YAML: {err}") from err
    recipe = recipe_from_dict(data, name=path.stem, path=str(path))
    if recipe.task not in task_names():
        raise UsageError(f"recipe {path}: task must be one of {', '.join(task_names())}; got {recipe.task!r}")
    from smc_trainer.training.arguments.renamed import canonical_values

    recipe.args = canonical_values(recipe.args, f"recipe {path}")  # a renamed flag's former name warns once
    check_recipe_args(recipe)
    return recipe


def recipe_from_dict(data: Any, name: str, path: str | None = None) -> Recipe:
    """Check a recipe's structure and build it; errors name the file and the offending key."""
    where = path or name
    if not isinstance(data, dict):
        raise UsageError(f"recipe {where} must be a YAML mapping with keys {', '.join(RECIPE_KEYS)}")
    unknown = sorted(set(data) - set(RECIPE_KEYS))
    if unknown:
        raise UsageError(f"recipe {where} has unknown top-level key(s) {', '.join(map(repr, unknown))}"
                         f"{did_you_mean(unknown[0], RECIPE_KEYS)}; valid keys are {', '.join(RECIPE_KEYS)}")
    missing = [k for k in REQUIRED_KEYS if not data.get(k)]
    if missing:
        raise UsageError(f"recipe {where} is missing required key(s) {', '.join(missing)}")
    splits = data.get("splits") or {}
    args = data.get("args") or {}
    if not isinstance(splits, dict) or set(splits) - set(SPLIT_NAMES):
        raise UsageError(f"recipe {where}: 'splits' must map some of {', '.join(SPLIT_NAMES)} to dataset split "
                         f"names (or null); got {splits!r}")
    if not isinstance(args, dict):
        raise UsageError(f"recipe {where}: 'args' must be a mapping of flag names to values; got {args!r}")
    chance = _typed(data, "chance_level", float, where, "a number in [0, 1]")
    if chance is not None and not 0.0 <= chance <= 1.0:
        raise UsageError(f"recipe {where}: chance_level must be a number in [0, 1]; got {chance!r}")
    folds = _typed(data, "folds", int, where, "an integer of at least 2")
    if folds is not None and folds < 2:
        raise UsageError(f"recipe {where}: folds must be an integer of at least 2; got {folds!r}")
    subsets = data.get("subsets") or []
    if not isinstance(subsets, list):
        raise UsageError(f"recipe {where}: subsets must be a list of subset names; got {subsets!r}")
    return Recipe(
        name=name,
        task=str(data["task"]),
        metric=str(data["metric"]),
        description=str(data.get("description") or ""),
        chance_level=chance,
        splits={k: (None if v is None else str(v)) for k, v in splits.items()},
        args=dict(args),
        path=path,
        subsets=[str(x) for x in subsets],
        folds=folds,
    )


def _typed(data: dict, key: str, kind: type, where: str, expected: str) -> Any:
    """`data[key]` as `kind` (None when absent); a value of another type is an error naming the key."""
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UsageError(f"recipe {where}: {key} must be {expected}; got {value!r}")
    try:
        converted = kind(value)
    except ValueError:
        raise UsageError(f"recipe {where}: {key} must be {expected}; got {value!r}") from None
    if kind is int and float(value) != converted:
        raise UsageError(f"recipe {where}: {key} must be {expected}; got {value!r}")
    return converted


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest of `choices` to `word`, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_recipe_args(recipe: Recipe, dataclass_types: tuple[type, ...] | None = None) -> None:
    """Reject recipe `args` keys that are no field of the argument dataclasses (typos fail early)."""
    if dataclass_types is None:
        from smc_trainer.training.arguments import DataArguments, ModelArguments, SparseTrainingArguments

        dataclass_types = (ModelArguments, DataArguments, SparseTrainingArguments)
    known = {f.name for t in dataclass_types for f in dataclasses.fields(t) if f.init}
    for key in recipe.args:
        if key in FORBIDDEN_ARGS:
            raise UsageError(f"recipe {recipe.path or recipe.name}: args.{key} cannot be set by a recipe")
        if key not in known:
            raise UsageError(f"recipe {recipe.path or recipe.name}: args.{key} is not a known flag"
                             f"{did_you_mean(key, known)} (see `run_smc.py --help` for the fields of "
                             "ModelArguments, DataArguments and SparseTrainingArguments)")


def _resolve(name_or_path: str) -> Path:
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    names = available_recipes()
    if name_or_path in names:
        return RECIPES_DIR / f"{name_or_path}.yaml"
    raise UsageError(f"--recipe must be one of {', '.join(names)} or a path to a recipe YAML; got {name_or_path!r}")
