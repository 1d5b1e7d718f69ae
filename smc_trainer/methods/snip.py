"""`snip`: prune by connection sensitivity |w * g| before fine-tuning ("SNIP (Before)").

Gradients are summed over `--snip_batches` training batches on the model itself (no deep copy),
and those batches are not consumed from the training stream (the original skipped two batches).
The score lives in `smc_trainer.engine.criteria.snip`; this is `omp_before` with that criterion.
"""

from __future__ import annotations

from smc_trainer.methods.base import register_method
from smc_trainer.methods.omp_before import OMPBefore


@register_method("snip")
class SNIP(OMPBefore):
    order = 12
    pattern_refusal = None
    default_criterion = "snip"
