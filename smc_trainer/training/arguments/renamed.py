"""Renamed flags: a flag's former name is still accepted (command line, recipes, presets, config files), with one
deprecation warning per former name and process, and is rewritten to the current name before anything reads it.

The former names come from the flags' roles (`roles.key_names`: a renamed flag keeps its former name in keys), so
a config that renames its flags (`HyperParameters.former_prefix`) needs nothing here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transformers.utils import logging

from smc_trainer.errors import UsageError
from smc_trainer.training.arguments.roles import key_names

logger = logging.get_logger(__name__)

_WARNED: set[str] = set()


def renamed_flags() -> dict[str, str]:
    """Former flag name -> current name, for every renamed flag of the training arguments (plugins' included)."""
    from smc_trainer.training.arguments.plugin_arguments import arguments_class

    return {former: current for current, former in key_names(arguments_class()).items()}


def warn_renamed(former: str, current: str, where: str = "") -> None:
    """Log that `former` is deprecated, once per process and former name."""
    if former in _WARNED:
        return
    _WARNED.add(former)
    logger.warning(f"{where}--{former} is deprecated and will be removed; use --{current} (same meaning, same "
                   "keys and results)")


def canonical_argv(argv: Sequence[str]) -> list[str]:
    """`argv` with every former flag (`--init_method snip`, `--init-method=snip`) written as its current name."""
    renamed = renamed_flags()
    out = []
    for token in argv:
        name, sep, value = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        current = renamed.get(name.replace("-", "_"))
        if current is not None:
            warn_renamed(name.replace("-", "_"), current)
            token = f"--{current}{sep}{value}"
        out.append(token)
    return out


def canonical_values(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A mapping of flag values (a recipe's `args`, a preset's, a config file's) with former names made current;
    `where` names the source in the warning and in the error when both names are given."""
    renamed = renamed_flags()
    out = dict(values)
    for former in [key for key in values if key in renamed]:
        current = renamed[former]
        if current in values:
            raise UsageError(f"{where}: {former} and {current} are the same flag ({former} is its deprecated name); "
                             f"keep {current} only")
        warn_renamed(former, current, f"{where}: ")
        out[current] = out.pop(former)
    return out
