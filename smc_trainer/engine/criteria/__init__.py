"""Pruning criteria: the *score* axis (`--criterion`), one module each, registered by name.

A criterion maps weights, gradients or statistics gathered during training to importance scores; it
never decides *when* masks change (that is the method's job, `smc_trainer.methods`). Criteria are
torch-only and testable without a Trainer. Modules in this package are discovered automatically, and
plugins (`--plugins FILE`, the `smc_trainer.plugins` entry-point group) may register more.
"""

from __future__ import annotations

from smc_trainer.engine.criteria.base import CRITERION_REGISTRY, Criterion, ScoringView, register_criterion
from smc_trainer.errors import UsageError
from smc_trainer.plugins import import_registry_modules

_loaded = False


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import_registry_modules(__path__, __name__)


def criterion_names() -> list[str]:
    """Registered criterion names, in a stable order (magnitude first)."""
    _load_all()
    return sorted(CRITERION_REGISTRY, key=lambda n: (CRITERION_REGISTRY[n].order, n))


def get_criterion_class(name: str) -> type[Criterion]:
    """The class registered as `name`; UsageError naming the valid choices otherwise."""
    _load_all()
    if name not in CRITERION_REGISTRY:
        raise UsageError(f"--criterion must be one of {', '.join(criterion_names())}; got {name!r}")
    return CRITERION_REGISTRY[name]


__all__ = ["CRITERION_REGISTRY", "Criterion", "ScoringView", "criterion_names", "get_criterion_class",
           "register_criterion"]
