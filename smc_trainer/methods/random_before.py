"""`random_before`: random pruning before fine-tuning ("Random (Before)"), with exact counts.

The original drew a Bernoulli mask per layer, so its sparsity was only approximately the target;
here random scores (`smc_trainer.engine.criteria.random`) go through the same exact selection as
every other criterion. Scores come from `--seed` and the layer's position, so every process draws
the same mask.
"""

from __future__ import annotations

from smc_trainer.engine.criteria.random import RANDOM_INIT_STREAM
from smc_trainer.methods.base import register_method
from smc_trainer.methods.omp_before import OMPBefore

__all__ = ["RANDOM_INIT_STREAM", "RandomBefore"]


@register_method("random_before")
class RandomBefore(OMPBefore):
    order = 11
    pattern_refusal = None
    default_criterion = "random"
