"""Sparse methods, one module each, registered by name with `@register_method` (one `Registry`, `METHODS`).

Modules in this package are discovered automatically, so adding a method means adding one file
(plus its test); nothing else needs editing. A method's own hyper-parameters are a `HyperParameters` dataclass
registered with it: their flags, keys and docs are generated from it.
"""

from __future__ import annotations

from smc_trainer.methods.base import METHODS, SparseMethod, register_method


def method_names() -> list[str]:
    """Registered method names, in a stable order (dense first)."""
    return METHODS.names()


def get_method_class(name: str) -> type[SparseMethod]:
    """The class registered as `name`; a UsageError naming the valid choices otherwise."""
    return METHODS.get(name)


__all__ = ["METHODS", "SparseMethod", "get_method_class", "method_names", "register_method"]
