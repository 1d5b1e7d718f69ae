"""Sparsity-preserving LoRA layers: the adapter's update is multiplied by its base weight's keep-mask.

A plain LoRA layer adds `s * B @ A` to a pruned weight and fills its zeros back in when merged. Here the
update is `(s * B @ A) * mask` both in the forward pass and in the merge, so training sees exactly the
function the merged model computes and peft's own `merge_and_unload()` leaves every pruned weight at exactly
zero (the approach of SQFT's SparsePEFT, arXiv 2410.03750).

It is built from peft's public extension points, without patching peft: `SparseLoraLinear` is a subclass of
`peft.tuners.lora.Linear` that peft creates through `LoraConfig._register_custom_module` (peft's dispatch of
custom LoRA layers), and whose `lora_variants` map a plain LoRA config to `MaskedLoraVariant`, a
`LoraVariant` (the mechanism of DoRA and aLoRA) that owns the forward pass, the merge and the unmerge.
`tests/test_adapters.py::test_peft_mechanism` fails if a peft release changes either mechanism.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.layer import LoraVariant
from torch import Tensor


class MaskOwner(Protocol):
    """Anything holding the current bool keep-masks by plain parameter name (e.g. `MaskSet`)."""

    masks: dict[str, Tensor]


class MaskRef:
    """Where a sparse LoRA layer reads its base weight's current mask: the owner and the plain parameter name.

    Read at every use, so a mask that changes during training (GMP) is seen at once. `deepcopy` shares it
    rather than copying it: a merged copy of a model masks like the model."""

    def __init__(self, owner: MaskOwner, name: str):
        self.owner = owner
        self.name = name

    def get(self) -> Tensor | None:
        return self.owner.masks.get(self.name)

    def __deepcopy__(self, memo: dict) -> MaskRef:
        return self


class MaskedLowRank(torch.autograd.Function):
    """`x @ ((s * B @ A) * mask).T` that keeps only x, A, B and the mask for backward (not the out x in
    update, which is rebuilt there): a frozen base then costs no weight-sized activation per layer.

    Computed in the dtype of `x` with autocast off, so fp32, bf16 and fp16 runs all take the same path."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight_a: Tensor, weight_b: Tensor, mask: Tensor, scaling: float) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            delta = _masked_delta(weight_a.to(x.dtype), weight_b.to(x.dtype), mask, scaling)
            out = torch.nn.functional.linear(x, delta)
        ctx.save_for_backward(x, weight_a, weight_b, mask)
        ctx.scaling = scaling
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight_a, weight_b, mask = ctx.saved_tensors
        grad_x = grad_a = grad_b = None
        with torch.autocast(x.device.type, enabled=False):
            grad_out = grad_out.to(x.dtype)
            a, b = weight_a.to(x.dtype), weight_b.to(x.dtype)
            if ctx.needs_input_grad[0]:
                grad_x = grad_out @ _masked_delta(a, b, mask, ctx.scaling)
            if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
                # d loss / d update, kept only where the mask keeps the weight, times the LoRA scaling
                grad_delta = grad_out.reshape(-1, grad_out.shape[-1]).T @ x.reshape(-1, x.shape[-1])
                grad_delta.mul_(mask).mul_(ctx.scaling)
                if ctx.needs_input_grad[1]:
                    grad_a = (b.T @ grad_delta).to(weight_a.dtype)
                if ctx.needs_input_grad[2]:
                    grad_b = (grad_delta @ a.T).to(weight_b.dtype)
        return grad_x, grad_a, grad_b, None, None


def _masked_delta(weight_a: Tensor, weight_b: Tensor, mask: Tensor, scaling: float) -> Tensor:
    """(s * B @ A) * mask, in the (out, in) layout of `nn.Linear`."""
    delta = weight_b @ weight_a
    return delta.mul_(mask).mul_(scaling)


class MaskedLoraVariant(LoraVariant):
    """The LoRA variant of `SparseLoraLinear`: forward, merge and unmerge with the masked update."""

    def supports_lora_conversion(self) -> bool:
        return False  # a masked update is not a low-rank matrix

    @staticmethod
    def init(module: SparseLoraLinear, adapter_name: str, **kwargs: Any) -> None:
        """Nothing to create: the mask lives with the base weight, not in the adapter."""

    @staticmethod
    def merge_safe(module: SparseLoraLinear, active_adapter: str, orig_weight: Tensor) -> Tensor:
        return orig_weight + module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def merge_unsafe(module: SparseLoraLinear, active_adapter: str, orig_weight: Tensor) -> None:
        orig_weight.data += module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def unmerge(module: SparseLoraLinear, active_adapter: str, orig_weight: Tensor) -> Tensor:
        return orig_weight.data - module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def forward(module: SparseLoraLinear, active_adapter: str, x: Tensor, result: Tensor, **kwargs: Any) -> Tensor:
        lora_a, lora_b = module.lora_A[active_adapter], module.lora_B[active_adapter]
        dropout, scaling = module.lora_dropout[active_adapter], module.scaling[active_adapter]
        mask = module.mask_out_in()
        if mask is None:  # a dense base weight: plain LoRA
            return result + lora_b(lora_a(dropout(x))) * scaling
        delta = MaskedLowRank.apply(dropout(x), lora_a.weight, lora_b.weight, mask, scaling)
        return result + delta.to(result.dtype)


class SparseLoraLinear(LoraLinear):
    """peft's LoRA `Linear` (also over transformers' `Conv1D`) whose update is masked by its base weight's mask.

    `bind_mask` tells it where the mask is; unbound, or while its base weight has no mask, it is plain LoRA."""

    def __init__(self, base_layer: torch.nn.Module, adapter_name: str, config: Any, **kwargs: Any) -> None:
        super().__init__(base_layer, adapter_name, config=config, **kwargs)
        self.mask_ref: MaskRef | None = None

    @property
    def lora_variants(self) -> dict[tuple[str, ...], type[LoraVariant]]:
        return {(): MaskedLoraVariant}  # DoRA and other variants are refused by peft's own check

    def bind_mask(self, ref: MaskRef | None) -> None:
        self.mask_ref = ref

    def base_mask(self) -> Tensor | None:
        """The base weight's current bool mask, in the base weight's own layout, on its device (None: dense)."""
        mask = self.mask_ref.get() if self.mask_ref is not None else None
        if mask is None:
            return None
        weight = self.get_base_layer().weight
        if mask.shape != weight.shape:
            raise ValueError(f"the mask of {self.mask_ref.name!r} is {tuple(mask.shape)}; its base weight is "
                             f"{tuple(weight.shape)}")
        return mask.to(weight.device, non_blocking=True)

    def mask_out_in(self) -> Tensor | None:
        """`base_mask` in the (out, in) layout of the adapter's update (transposed for `Conv1D`)."""
        mask = self.base_mask()
        return mask.T if mask is not None and self.fan_in_fan_out else mask

    def get_delta_weight(self, adapter: str) -> Tensor:
        """peft's update `s * B @ A`, zero wherever the base weight is pruned (used by merge and unmerge)."""
        delta = super().get_delta_weight(adapter)
        mask = self.base_mask()
        return delta if mask is None else torch.where(mask, delta, torch.zeros((), dtype=delta.dtype,
                                                                                device=delta.device))

    def __repr__(self) -> str:
        return "sparse_" + super().__repr__()
