"""One-shot activation-aware pruning as pure functions on tensors: Wanda (Sun et al. 2023) and SparseGPT
(Frantar & Alistarh 2023). Statistics in (input column norms, the layer Hessian X X^T), scores or pruned
weights out; collecting the statistics with forward hooks is `smc_trainer.training.calibration`'s job.

Every function takes a weight in its linear layout [out, in] (`linear_view` turns a transposed `Conv1D`
weight into it; `as_param_layout` and `write_linear` go back).
"""

from __future__ import annotations

import torch
from torch import Tensor


def linear_view(weight: Tensor, input_dim: int) -> Tensor:
    """`weight` as [out, in]: itself for Linear (input_dim 1), its transpose (a view) for a Conv1D (input_dim 0)."""
    return weight if input_dim == 1 else weight.t()


def as_param_layout(mask: Tensor, input_dim: int) -> Tensor:
    """A [out, in] tensor back in the weight's own layout (transposed for a Conv1D)."""
    return mask if input_dim == 1 else mask.t().contiguous()


@torch.no_grad()
def write_linear(param: Tensor, input_dim: int, value: Tensor) -> None:
    """Write a [out, in] `value` into `param` (transposing for a Conv1D)."""
    linear_view(param, input_dim).copy_(value)
