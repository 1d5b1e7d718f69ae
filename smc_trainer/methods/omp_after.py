"""`omp_after`: prune the dense fine-tuned weights by global magnitude, then retrain ("OMP (After)").

The pipeline loads the cached dense fine-tune before training starts, so the magnitude criterion
here sees fine-tuned weights; the optimizer and LR schedule restart for the retraining.
"""

from __future__ import annotations

from smc_trainer.methods.base import register_method
from smc_trainer.methods.omp_before import OMPBefore


@register_method("omp_after")
class OMPAfter(OMPBefore):
    phase = "after"
    order = 1
