"""`sparsegpt_before` / `sparsegpt_after`: the names `omp_before --criterion sparsegpt` / `omp_after --criterion
sparsegpt` had before the criterion axis, kept as aliases that mean exactly the same (SparseGPT, Frantar & Alistarh
2023: one-shot OBS pruning that also updates the remaining weights, then fine-tune;
`smc_trainer.engine.criteria.sparsegpt`)."""

from __future__ import annotations

from smc_trainer.methods.base import register_method
from smc_trainer.methods.omp_after import OMPAfter
from smc_trainer.methods.omp_before import OMPBefore


@register_method("sparsegpt_before")
class SparseGPTBefore(OMPBefore):
    order = 14
    default_criterion = "sparsegpt"
    accepts_criterion = False


@register_method("sparsegpt_after")
class SparseGPTAfter(OMPAfter):
    order = 6
    default_criterion = "sparsegpt"
    accepts_criterion = False
