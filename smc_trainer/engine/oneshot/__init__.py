"""One-shot activation-aware pruning as pure functions on tensors: Wanda (Sun et al. 2023) and SparseGPT
(Frantar & Alistarh 2023). Statistics in (input column norms, the layer Hessian X X^T), scores or pruned
weights out; collecting the statistics with forward hooks is `smc_trainer.training.calibration`'s job.

Every function takes a weight in its linear layout [out, in] (`linear_view` turns a transposed `Conv1D`
weight into it).
"""

from __future__ import annotations

from torch import Tensor


def linear_view(weight: Tensor, input_dim: int) -> Tensor:
    """`weight` as [out, in]: itself for Linear (input_dim 1), its transpose (a view) for a Conv1D (input_dim 0)."""
    return weight if input_dim == 1 else weight.t()
