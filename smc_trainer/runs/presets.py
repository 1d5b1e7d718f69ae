"""Method presets: named bundles of flags (recipes/methods/<name>.yaml) usable wherever a method name is.

`--sparse_method obert` runs the preset's base method (`lrr`) with the preset's flags as defaults: flags given
on the command line still win, and the preset's name labels the run's ledger rows and report lines. A
preset file holds `description`, `label` (the report's legend) and `args` (flag: value, `sparse_method` required).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import yaml

from smc_trainer.errors import UsageError
from smc_trainer.methods import method_names
from smc_trainer.runs.recipes import RECIPES_DIR

PRESETS_DIR = RECIPES_DIR / "methods"
PRESET_KEYS = ("description", "label", "args")


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    label: str
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.args["sparse_method"]

    def overrides(self, given: set[str] = frozenset()) -> dict[str, Any]:
        """The preset's flags minus those in `given` (flags the user set), with the base method and the label."""
        out = {k: v for k, v in self.args.items() if k not in given}
        return {**out, "sparse_method": self.method, "method_preset": self.name}


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")) if PRESETS_DIR.is_dir() else []


@cache
def load_preset(name: str) -> Preset:
    """The preset `name` (recipes/methods/<name>.yaml), checked: known keys, known flags, a registered method."""
    if name not in preset_names():
        raise UsageError(f"method preset must be one of {', '.join(preset_names())}; got {name!r}")
    path = PRESETS_DIR / f"{name}.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or set(data) - set(PRESET_KEYS) or not isinstance(data.get("args"), dict):
        raise UsageError(f"preset {path} must be a mapping with keys {', '.join(PRESET_KEYS)} ('args' a mapping)")
    args = dict(data["args"])
    if args.get("sparse_method") not in method_names():
        raise UsageError(f"preset {path}: args.sparse_method must be one of {', '.join(method_names())}; "
                         f"got {args.get('sparse_method')!r}")
    from smc_trainer.training.arguments import SparseTrainingArguments
    from smc_trainer.training.arguments.renamed import canonical_values

    args = canonical_values(args, f"preset {path}")
    known = {f.name for f in dataclasses.fields(SparseTrainingArguments) if f.init}
    unknown = sorted(set(args) - known)
    if unknown:
        raise UsageError(f"preset {path}: {', '.join(unknown)} are not flags of SparseTrainingArguments")
    return Preset(name, str(data.get("description") or ""), str(data.get("label") or name), args)


def is_preset(name: str | None) -> bool:
    return name is not None and name not in method_names() and name in preset_names()


def method_label(name: str) -> str | None:
    """The report label of a preset name; None for anything else."""
    return load_preset(name).label if is_preset(name) else None


def method_changes(config: Any, name: str) -> dict[str, Any]:
    """Training-argument changes that make `config` run method or preset `name` (a sweep's job): a preset's flags
    apply except those the user gave on the command line."""
    if not is_preset(name):
        return {"sparse_method": name, **({"method_preset": None} if config.training_args.method_preset else {})}
    return load_preset(name).overrides(given_flags(config.flags))


def given_flags(flags: tuple[str, ...] | None) -> set[str]:
    """Flag names (without dashes) present in a command line."""
    return {f[2:].split("=", 1)[0] for f in flags or () if f.startswith("--")}


def base_method(name: str) -> str:
    """The registered method a method or preset name runs."""
    return load_preset(name).method if is_preset(name) else name
