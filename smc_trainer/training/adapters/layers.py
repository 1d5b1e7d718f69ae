"""Sparsity-preserving LoRA layers: the adapter's update is multiplied by its base weight's keep-mask.

A plain LoRA layer adds `s * B @ A` to a pruned weight and fills its zeros back in when merged. Here the
update is `(s * B @ A) * mask` both in the forward pass and in the merge, so training sees exactly the
function the merged model computes and peft's own `merge_and_unload()` leaves every pruned weight at exactly
zero (the approach of SQFT's SparsePEFT, arXiv 2410.03750).

It is built from peft's public extension points, without patching peft: `SparseLoraLinear` is a subclass of
`peft.tuners.lora.Linear` that peft creates through `LoraConfig._register_custom_module` (peft's dispatch of
custom LoRA layers), and whose `lora_variants` map a plain LoRA config to `MaskedLoraVariant`, a
`LoraVariant` (the mechanism of DoRA and aLoRA) that owns the forward pass, the merge and the unmerge.
`tests/training/test_adapters.py::test_peft_mechanism` fails if a peft release changes either mechanism.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.layer import LoraVariant
from torch import Tensor
from transformers.pytorch_utils import Conv1D

from smc_trainer.training.adapters.dora import MaskedDoraVariant


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
    def forward(ctx: Any, x: Tensor, weight_a: Tensor, weight_b: Tensor, mask: Tensor, scaling: float,
                straight_through: bool = False) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            delta = _masked_delta(weight_a.to(x.dtype), weight_b.to(x.dtype), mask, scaling)
            out = torch.nn.functional.linear(x, delta)
        ctx.save_for_backward(x, weight_a, weight_b, mask)
        ctx.scaling, ctx.straight_through = scaling, straight_through
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
            if ctx.straight_through:  # as FusedMaskedLoraLinear: the unmasked update's low-rank gradient
                g, x2d = grad_out.reshape(-1, grad_out.shape[-1]), x.reshape(-1, x.shape[-1])
                if ctx.needs_input_grad[1]:
                    grad_a = ((g @ b).T @ x2d).mul_(ctx.scaling).to(weight_a.dtype)
                if ctx.needs_input_grad[2]:
                    grad_b = (g.T @ (x2d @ a.T)).mul_(ctx.scaling).to(weight_b.dtype)
            elif ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
                # d loss / d update, kept only where the mask keeps the weight, times the LoRA scaling
                grad_delta = grad_out.reshape(-1, grad_out.shape[-1]).T @ x.reshape(-1, x.shape[-1])
                grad_delta.mul_(mask).mul_(ctx.scaling)
                if ctx.needs_input_grad[1]:
                    grad_a = (b.T @ grad_delta).to(weight_a.dtype)
                if ctx.needs_input_grad[2]:
                    grad_b = (grad_delta @ a.T).to(weight_b.dtype)
        return grad_x, grad_a, grad_b, None, None, None


class FusedMaskedLoraLinear(torch.autograd.Function):
    """`x @ (W + (s * B @ A) * mask).T + bias` over a frozen base weight: the masked update is added to the base
    weight and the layer does ONE weight-sized product in the forward pass and two in the backward (the input
    gradient and the masked weight gradient `(g.T @ x) * mask` that A and B need) -- the cost of a full
    fine-tune's linear, against five for the base layer plus a separate `MaskedLowRank` (measured in
    benchmarks/bench_lora_overhead.py). The summed weight is rebuilt in the backward instead of kept, so a layer stores
    no weight-sized activation, and the backward reuses one weight-sized buffer for both products.

    `straight_through` (`--adapter_gradient straight_through`) gives A and B the gradient of the unmasked update
    instead (`s * B.T @ g.T @ x` and `s * g.T @ x @ A.T`, computed low-rank): no weight-sized product beyond
    plain LoRA's, at the price of a biased gradient; the forward pass (and so the merge) stays exactly masked.

    `weight_oi`, `mask_oi` are in the (out, in) layout of `nn.Linear` (a transposed view for `Conv1D`). The
    product runs in autocast's dtype when autocast is on (as the base layer would), else in the dtype of `x`."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight_oi: Tensor, bias: Tensor | None, weight_a: Tensor, weight_b: Tensor,
                mask_oi: Tensor, scaling: float, straight_through: bool = False) -> Tensor:
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            x_c = x.to(dtype)
            weight = _summed_weight(weight_oi, weight_a, weight_b, mask_oi, scaling, dtype)
            out = torch.nn.functional.linear(x_c, weight, None if bias is None else bias.to(dtype))
        ctx.save_for_backward(x_c, weight_oi, weight_a, weight_b, mask_oi)
        ctx.scaling, ctx.x_dtype, ctx.has_bias = scaling, x.dtype, bias is not None
        ctx.straight_through = straight_through
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x_c, weight_oi, weight_a, weight_b, mask_oi = ctx.saved_tensors
        dtype = x_c.dtype
        grad_x = grad_a = grad_b = grad_bias = None
        with torch.autocast(x_c.device.type, enabled=False):
            g = grad_out.to(dtype).reshape(-1, grad_out.shape[-1])
            x2d = x_c.reshape(-1, x_c.shape[-1])
            a, b = weight_a.to(dtype), weight_b.to(dtype)
            buffer = None  # one weight-sized tensor: the summed weight, then the weight gradient
            if ctx.needs_input_grad[0]:  # not needed where x comes from frozen layers (the first layer's input)
                buffer = _summed_weight(weight_oi, weight_a, weight_b, mask_oi, ctx.scaling, dtype)
                grad_x = (g @ buffer).reshape(x_c.shape).to(ctx.x_dtype)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_bias = g.sum(0).to(ctx.bias_dtype)
            if ctx.straight_through:  # the gradient of x @ (s B A).T: low-rank, no weight-sized product
                if ctx.needs_input_grad[3]:
                    grad_a = ((g @ b).T @ x2d).mul_(ctx.scaling).to(weight_a.dtype)
                if ctx.needs_input_grad[4]:
                    grad_b = (g.T @ (x2d @ a.T)).mul_(ctx.scaling).to(weight_b.dtype)
            elif ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:
                grad_delta = g.T @ x2d if buffer is None else torch.mm(g.T, x2d, out=buffer)  # weight no longer needed
                grad_delta.mul_(mask_oi).mul_(ctx.scaling)
                if ctx.needs_input_grad[3]:
                    grad_a = (b.T @ grad_delta).to(weight_a.dtype)
                if ctx.needs_input_grad[4]:
                    grad_b = (grad_delta @ a.T).to(weight_b.dtype)
        return grad_x, None, grad_bias, grad_a, grad_b, None, None, None


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype a linear layer computes `x` in: autocast's when autocast is on for x's device, else x's own."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def _summed_weight(weight_oi: Tensor, weight_a: Tensor, weight_b: Tensor, mask_oi: Tensor, scaling: float,
                   dtype: torch.dtype) -> Tensor:
    """A new (out, in) tensor `W + (s * B @ A) * mask` in `dtype`.

    Computed as `(W + s * B @ A) * mask`, the sum fused into the product (`addmm`) and one pass for the mask: the
    same tensor because a pruned base weight is exactly zero (the invariant every MaskSet keeps). The sum is
    formed in the base weight's dtype and rounded to `dtype` once, so a small update is not lost to a bf16 W."""
    w_dtype = weight_oi.dtype
    summed = torch.addmm(weight_oi, weight_b.to(w_dtype) * scaling, weight_a.to(w_dtype))
    return summed.mul_(mask_oi).to(dtype)


def _masked_delta(weight_a: Tensor, weight_b: Tensor, mask: Tensor, scaling: float) -> Tensor:
    """(s * B @ A) * mask, in the (out, in) layout of `nn.Linear`: the scaling goes into the small factor, so the
    weight-sized result is written once by the product and passed over once by the mask."""
    delta = (weight_b * scaling) @ weight_a
    return delta.mul_(mask)


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
        delta = MaskedLowRank.apply(dropout(x), lora_a.weight, lora_b.weight, mask, scaling, module.straight_through)
        return result + delta.to(result.dtype)


class SparseLoraLinear(LoraLinear):
    """peft's LoRA `Linear` (also over transformers' `Conv1D`) whose update is masked by its base weight's mask.

    `bind_mask` tells it where the mask is; unbound, or while its base weight has no mask, it is plain LoRA."""

    def __init__(self, base_layer: torch.nn.Module, adapter_name: str, config: Any, **kwargs: Any) -> None:
        super().__init__(base_layer, adapter_name, config=config, **kwargs)
        self.mask_ref: MaskRef | None = None
        self.straight_through = False  # `--adapter_gradient straight_through`: see FusedMaskedLoraLinear

    @property
    def lora_variants(self) -> dict[tuple[str, ...], type[LoraVariant]]:
        # other variants (aLoRA, Arrow, ...) are refused by peft's own check
        return {(): MaskedLoraVariant, ("use_dora",): MaskedDoraVariant}

    def masked_update(self, x: Tensor, adapter: str) -> Tensor:
        """`x @ ((s * B @ A) * mask).T` for `adapter`, with the gradient `--adapter_gradient` chooses (DoRA's)."""
        return MaskedLowRank.apply(x, self.lora_A[adapter].weight, self.lora_B[adapter].weight, self.mask_out_in(),
                                   self.scaling[adapter], self.straight_through)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """peft's forward, except in the common training case (one active adapter over a frozen, masked
        `nn.Linear`/`Conv1D`, no adapter dropout, no extra arguments, no hooks on the base layer), where the
        masked update is fused into the base layer's product (`FusedMaskedLoraLinear`). Same function, fewer
        weight-sized products; every other case goes through peft and `MaskedLoraVariant`."""
        adapter = self._fusable_adapter(args, kwargs)
        mask = self.mask_out_in() if adapter is not None else None
        if mask is None:  # not fusable, or a dense base weight (plain LoRA)
            return super().forward(x, *args, **kwargs)
        base = self.get_base_layer()
        weight_oi = base.weight.T if self.fan_in_fan_out else base.weight
        return FusedMaskedLoraLinear.apply(x, weight_oi, base.bias, self.lora_A[adapter].weight,
                                           self.lora_B[adapter].weight, mask, self.scaling[adapter],
                                           self.straight_through)

    def _fusable_adapter(self, args: tuple, kwargs: dict) -> str | None:
        """The one active adapter when the fused product computes exactly what peft's forward would, else None."""
        if args or kwargs or self.disable_adapters or self.merged:
            return None
        active = [a for a in self.active_adapters if a in self.lora_A]
        if len(active) != 1 or active[0] in self.lora_magnitude_vector:
            return None
        adapter = active[0]
        dropout = self.lora_dropout[adapter]
        if self.training and not isinstance(dropout, torch.nn.Identity) and dropout.p > 0:
            return None  # dropout applies to the adapter's input only: the two products must stay apart
        base = self.get_base_layer()
        if type(base) not in (torch.nn.Linear, Conv1D) or base.weight.requires_grad:
            return None  # a subclass may compute something else; a trainable base needs its own gradient
        if base._forward_hooks or base._forward_pre_hooks:
            return None  # hooks expect to see the base layer run
        return adapter

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
