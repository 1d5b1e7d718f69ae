"""Flags generated from the methods' and criteria's own configs (`smc_trainer.engine.hyperparameters`).

`flag_mixin(GmpConfig)` is the flag group of a built-in config: a dataclass with one field per knob, named by its
flag, carrying the help text and choices for `HfArgumentParser` and the roles (`key`, `omit_at_default`) for the
runs layer; `SparseTrainingArguments` derives from it, so adding a knob to `GmpConfig` adds the flag, its
validation, its place in the keys and its line in the docs. The plugins' configs become flags the same way, in
`plugin_arguments.arguments_class()`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field, make_dataclass
from typing import Any

from smc_trainer.engine.hyperparameters import PARSER_METADATA, HyperParameters
from smc_trainer.training.arguments.roles import declare


def flag_mixin(config: type[HyperParameters], name: str | None = None, *, module: str | None = None,
               omit_at_default: bool = False, title: str | None = None) -> type:
    """A dataclass of `config`'s flags: field `flag_of(knob)`, with the knob's type, default, help and choices."""
    types = config.types()
    specs: list[tuple[str, Any, dataclasses.Field]] = []
    for knob in config.fields():
        meta = knob.metadata
        parser_meta = {key: meta[key] for key in PARSER_METADATA if key in meta}
        former = config.former_flag_of(knob.name)
        if former is not None:  # the former flag stays an option string of the renamed one (renamed.py warns)
            parser_meta["aliases"] = [*parser_meta.get("aliases", ()), *former_options(former)]
            parser_meta["help"] = f"{parser_meta.get('help', '')} Formerly --{former} (deprecated, still accepted)."
        spec = field(default=knob.default, default_factory=knob.default_factory, metadata=parser_meta)
        declare(spec, key=meta.get("key", "run"), omit_at_default=omit_at_default or meta.get("omit_at_default", False),
                dense_reset=meta.get("dense_reset", False), key_name=former)
        specs.append((config.flag_of(knob.name), types[knob.name], spec))
    cls = make_dataclass(name or config.__name__.removesuffix("Config") + "Arguments", specs)
    cls.__module__ = module or config.__module__
    cls.__doc__ = f"The flags of `{config.__module__}.{config.__qualname__}`: {(config.__doc__ or '').strip()}"
    cls.config_class = config
    cls.help_group = config.title or title or config.__name__.removesuffix("Config")  # its group in --help
    return cls


def former_options(flag: str) -> list[str]:
    """The option strings argparse accepted for a former flag: `--init_method` and `--init-method`."""
    return list(dict.fromkeys((f"--{flag}", f"--{flag.replace('_', '-')}")))
