"""The training arguments with the flags of the configs plugins registered (known only once `--plugins` is read).

`arguments_class()` is `SparseTrainingArguments` until a plugin registers a method or criterion with a config of
its own; then it is a subclass with one more flag group per plugin config (`generated.flag_mixin`), registered in
this module under a stable name so its instances pickle (`training_args.bin`, executors). A plugin's flags are
left out of every key while at their defaults, so loading a plugin changes no existing key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from dataclasses import make_dataclass

from smc_trainer.engine.hyperparameters import HyperParameters
from smc_trainer.errors import UsageError
from smc_trainer.training.arguments import SparseTrainingArguments
from smc_trainer.training.arguments.generated import flag_mixin


def plugin_configs() -> list[tuple[str, type[HyperParameters]]]:
    """The configs registered by plugins: those whose flags `SparseTrainingArguments` does not have, with the
    registry entry they belong to (`criterion taylor`). A flag that clashes with an existing one is refused."""
    from smc_trainer.engine.criteria import CRITERIA
    from smc_trainer.methods import METHODS

    known = {f.name for f in dataclasses.fields(SparseTrainingArguments)}
    found: list[tuple[str, type[HyperParameters]]] = []
    seen: dict[str, str] = {}
    for registry in (METHODS, CRITERIA):
        for entry, config in registry.configs().items():
            flags = list(config.flags().values())
            if set(flags) <= known:
                continue  # a built-in config: its flags are fields of SparseTrainingArguments already
            owner = f"{registry.kind} {entry}"
            for flag in flags:
                if flag in known or flag in seen:
                    other = seen.get(flag, "an existing flag")
                    raise UsageError(f"{owner}: its flag --{flag} is already {other}; give the field another name "
                                     f"or the config another prefix (HyperParameters.prefix)")
                seen[flag] = f"a flag of {owner}"
            found.append((owner, config))
    return found


def arguments_class() -> type:
    """`SparseTrainingArguments`, plus a flag group for every config registered by a plugin (loaded so far)."""
    configs = plugin_configs()
    if not configs:
        return SparseTrainingArguments
    digest = hashlib.sha256("|".join(f"{c.__module__}.{c.__qualname__}" for _, c in configs).encode()).hexdigest()
    name = f"SparseTrainingArgumentsWithPlugins_{digest[:12]}"
    module = sys.modules[__name__]
    if not hasattr(module, name):
        mixins = [flag_mixin(config, module=__name__, omit_at_default=True, title=f"{owner} (plugin)")
                  for owner, config in configs]
        cls = make_dataclass(name, [], bases=(*reversed(mixins), SparseTrainingArguments))
        cls.__module__ = __name__
        cls.__doc__ = f"SparseTrainingArguments with the flags of {', '.join(owner for owner, _ in configs)}."
        cls.__qualname__ = name
        setattr(module, name, cls)  # pickle finds it by name (training_args.bin, executors)
    return getattr(module, name)
