"""DoRA on a sparse base: peft's DoRA with the update masked by the base weight's mask, exact in the merge.

DoRA's merged weight is `m / ||W + D||_row * (W + D)` with `D` the LoRA update. Masked, `D = (s * B @ A) * mask`;
a pruned weight is zero in `W` and in `D`, so it is zero in the merged weight whatever the magnitude `m`: the
masked form is exact (zeros kept, forward equal to the merge) for the Linear / Conv1D layers of `SparseLoraLinear`.
peft's own `DoraLinearVariant` merges through `module.get_delta_weight`, which `SparseLoraLinear` masks, so only
the forward pass is ours.

This module imports nothing of `layers.py` (which maps `use_dora` to this variant): the masked low-rank product
is reached through the layer (`module.masked_update`), so the import graph stays acyclic.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora.variants import DoraLinearVariant
from torch import Tensor, nn


class MaskedDoraVariant(DoraLinearVariant):
    """peft's DoRA variant with the masked update in the forward pass (merge and unmerge are peft's, on the masked
    `get_delta_weight`). Unbound, or over a dense base weight, it is peft's DoRA."""

    def supports_lora_conversion(self) -> bool:
        return False  # a masked update is not a low-rank matrix

    @staticmethod
    def forward(module: Any, active_adapter: str, x: Tensor, result: Tensor, **kwargs: Any) -> Tensor:
        mask = module.mask_out_in()
        if mask is None:
            return DoraLinearVariant.forward(module, active_adapter, x, result, **kwargs)
        dropout, scaling = module.lora_dropout[active_adapter], module.scaling[active_adapter]
        base = module.get_base_layer()
        weight = (base.weight.T if module.fan_in_fan_out else base.weight).to(x.dtype)  # (out, in)
        lora_a, lora_b = module.lora_A[active_adapter].weight, module.lora_B[active_adapter].weight
        with torch.no_grad():  # DoRA's norm is a constant for the gradient (section 4.3 of the paper), as in peft
            delta = (lora_b.to(x.dtype) * scaling) @ lora_a.to(x.dtype)
            weight_norm = torch.linalg.norm(weight + delta.mul_(mask), dim=1)
        scale = (module.lora_magnitude_vector[active_adapter].weight / weight_norm).view(1, -1)
        if isinstance(dropout, nn.Identity) or not module.training:  # as peft: the base output is reused
            base_result = result if base.bias is None else result - base.bias
        else:
            x = dropout(x)
            base_result = nn.functional.linear(x, weight)
        update = module.masked_update(x, active_adapter)  # x @ ((s * B @ A) * mask).T
        return result + (scale - 1) * base_result + scale * update.to(result.dtype)
