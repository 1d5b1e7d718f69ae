"""`wanda_before` / `wanda_after`: the names `omp_before --criterion wanda` / `omp_after --criterion wanda` had
before the criterion axis, kept as aliases that mean exactly the same (Wanda, Sun et al. 2023: one-shot pruning by
|W| x ||X_j|| from `--calibration_samples` examples, then fine-tune; `smc_trainer.engine.criteria.wanda`)."""

from __future__ import annotations

from smc_trainer.methods.base import register_method
from smc_trainer.methods.omp_after import OMPAfter
from smc_trainer.methods.omp_before import OMPBefore


@register_method("wanda_before")
class WandaBefore(OMPBefore):
    order = 13
    default_criterion = "wanda"
    accepts_criterion = False


@register_method("wanda_after")
class WandaAfter(OMPAfter):
    order = 5
    default_criterion = "wanda"
    accepts_criterion = False
