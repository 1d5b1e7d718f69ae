"""`random_after`: random pruning of the dense fine-tuned model, then retrain ("Random (After)")."""

from __future__ import annotations

from smc_trainer.methods.base import register_method
from smc_trainer.methods.random_before import RandomBefore


@register_method("random_after")
class RandomAfter(RandomBefore):
    phase = "after"
    order = 2
