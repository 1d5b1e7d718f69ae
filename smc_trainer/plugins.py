"""Plugins: a researcher's own criteria and methods, loaded before the registries are used.

Two ways in, neither needs the package edited:
- `--plugins my_pruner.py[,other.py,a.module]`: Python files (or importable module names) imported once;
  their `@register_criterion` / `@register_method` decorators add the new names.
- an installed package declaring an entry point in the `smc_trainer.plugins` group
  (`[project.entry-points."smc_trainer.plugins"] mine = "my_package.pruners"`): imported the first time
  a registry is listed.
This module imports nothing of the package, so every layer may call it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Iterable
from types import ModuleType

from smc_trainer.errors import MissingFileError, UsageError

ENTRY_POINT_GROUP = "smc_trainer.plugins"
_loaded: dict[str, ModuleType] = {}
_entry_points_loaded = False


def plugin_specs(text: str | None) -> list[str]:
    """The comma-separated items of a --plugins value."""
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def load_plugins(text: str | None) -> list[ModuleType]:
    """Import every plugin named in `text` (files by path, else module names), each only once per process."""
    return [load_plugin(spec) for spec in plugin_specs(text)]


def load_plugin(spec: str) -> ModuleType:
    """Import one plugin: a `.py` file by path, or an importable module name."""
    is_file = spec.endswith(".py") or os.sep in spec
    key = os.path.realpath(spec) if is_file else spec
    if key in _loaded:
        return _loaded[key]
    if is_file:
        if not os.path.isfile(spec):
            raise MissingFileError(f"--plugins: file {spec!r} does not exist")
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        name = f"smc_trainer_plugin_{os.path.splitext(os.path.basename(spec))[0]}_{digest}"
        module_spec = importlib.util.spec_from_file_location(name, key)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception:
            del sys.modules[name]
            raise
    else:
        try:
            module = importlib.import_module(spec)
        except ModuleNotFoundError as err:
            raise UsageError(f"--plugins: {spec!r} is neither a .py file nor an importable module ({err})") from err
    _loaded[key] = module
    return module


def load_entry_point_plugins() -> None:
    """Import the modules installed packages declare in the `smc_trainer.plugins` entry-point group (once)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.value not in _loaded:
            _loaded[entry_point.value] = entry_point.load()


def import_registry_modules(path: Iterable[str], package: str) -> None:
    """Import every module of a registry package (`methods`, `engine.criteria`) but its `base`, then the installed
    plugins: every `@register_...` has run before the registry is read."""
    for info in pkgutil.iter_modules(path):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
    load_entry_point_plugins()
