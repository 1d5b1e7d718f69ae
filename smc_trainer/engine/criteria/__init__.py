"""Pruning criteria: the *score* axis (`--criterion`), one module each, registered by name.

A criterion maps weights, gradients or statistics gathered during training to importance scores; it
never decides *when* masks change (that is the method's job, `smc_trainer.methods`). Criteria are
torch-only and testable without a Trainer. Modules in this package are discovered automatically, and
plugins (`--plugins FILE`, the `smc_trainer.plugins` entry-point group) may register more.
"""

from __future__ import annotations

from smc_trainer.engine.criteria.base import CRITERIA, Criterion, ScoringView, register_criterion


def criterion_names() -> list[str]:
    """Registered criterion names, in a stable order (magnitude first)."""
    return CRITERIA.names()


def get_criterion_class(name: str) -> type[Criterion]:
    """The class registered as `name`; a UsageError naming the valid choices otherwise."""
    return CRITERIA.get(name)


__all__ = ["CRITERIA", "Criterion", "ScoringView", "criterion_names", "get_criterion_class", "register_criterion"]
