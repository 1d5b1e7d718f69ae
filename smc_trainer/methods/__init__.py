"""Sparse methods, one module each, registered by name with `@register_method`.

Modules in this package are discovered automatically, so adding a method means adding one file
(plus its test); nothing else needs editing.
"""

from __future__ import annotations

from smc_trainer.errors import UsageError
from smc_trainer.methods.base import METHOD_REGISTRY, SparseMethod, register_method
from smc_trainer.plugins import import_registry_modules

_loaded = False


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True  # before importing: a plugin that reads the registry while loading must not start over
    import_registry_modules(__path__, __name__)


def method_names() -> list[str]:
    """Registered method names, in a stable order (dense first)."""
    _load_all()
    return sorted(METHOD_REGISTRY, key=lambda n: (METHOD_REGISTRY[n].order, n))


def get_method_class(name: str) -> type[SparseMethod]:
    """The class registered as `name`; ValueError naming the valid choices otherwise."""
    _load_all()
    if name not in METHOD_REGISTRY:
        raise UsageError(f"--sparse_method must be one of {', '.join(method_names())}; got {name!r}")
    return METHOD_REGISTRY[name]


__all__ = ["METHOD_REGISTRY", "SparseMethod", "get_method_class", "method_names", "register_method"]
