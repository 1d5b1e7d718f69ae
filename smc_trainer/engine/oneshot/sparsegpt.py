"""SparseGPT: prune a layer and update its remaining weights to keep W X (Frantar & Alistarh 2023).

Optimal Brain Surgeon on the layer Hessian H = X X^T, column by column: pruning weight (r, i) with the
columns i.. still free moves the rest of row r by -w_ri / [H_F^-1]_00 * [H_F^-1]_0,: . Every [H_F^-1] row
needed is a row of the upper Cholesky factor U of H^-1 (scaled by U_ii), so one factorisation serves all
columns. Columns are processed in blocks with lazy updates: inside a block the updates are applied column by
column, and the block's accumulated error reaches the later columns in one matmul. The mask is chosen per block
from the OBS saliency w^2 / U_ii^2 of the weights as updated so far: exact counts per block (unstructured) or
the N of every M (N:M) with the highest saliency.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from smc_trainer.engine.patterns import NMPattern, nm_keep_mask
from smc_trainer.errors import UsageError

DEFAULT_BLOCKSIZE = 128
DEFAULT_DAMPENING = 0.01


def inverse_cholesky(hessian: Tensor, dampening: float = DEFAULT_DAMPENING) -> Tensor:
    """Upper Cholesky factor U of (H + lambda I)^-1 with lambda = dampening * mean(diag H). Inputs that were
    never active (zero diagonal) get a unit diagonal so H stays invertible; their weights have no effect on W X.
    `hessian` is left unchanged (`inverse_cholesky_` computes the same in its buffer)."""
    return inverse_cholesky_(hessian.clone(), dampening)


def inverse_cholesky_(hessian: Tensor, dampening: float = DEFAULT_DAMPENING) -> Tensor:
    """`inverse_cholesky` computed in the buffer of `hessian` (symmetric, square, contiguous), which it overwrites:
    no second matrix of that size is allocated, so pruning a layer holds its Hessian's memory only. Returns U as
    a column-major view of that buffer: the layout, and the bits, `torch.linalg.cholesky` gives."""
    if not hessian.is_contiguous():
        raise UsageError("inverse_cholesky_ needs a contiguous Hessian (it factorises in place)")
    diagonal = hessian.diagonal()
    dead = diagonal == 0
    diagonal[dead] = 1.0
    diagonal.add_(dampening * float(diagonal.mean()))
    h = hessian.mT  # the same values (H is symmetric), laid out column-major as LAPACK works in place
    info = torch.empty((), dtype=torch.int32, device=h.device)
    torch.linalg.cholesky_ex(h, out=(h, info))
    if int(info) != 0:
        raise UsageError(f"the layer Hessian is not positive definite even with dampening {dampening}; raise "
                         "--sparsegpt_dampening (e.g. 0.1) or calibrate on more samples")
    torch.cholesky_inverse(h, out=h)
    torch.linalg.cholesky(h, upper=True, out=h)
    return h


def block_prune_counts(pruned: int, rows: int, cols: int, starts: list[int]) -> list[int]:
    """Weights pruned in each column block [starts[b], starts[b+1]): the rounded share of `pruned` up to each block
    end, differenced, so the blocks sum to exactly `pruned`."""
    ends = [*starts[1:], cols]
    cumulative = [0] + [(2 * pruned * end + cols) // (2 * cols) for end in ends]
    return [cumulative[b + 1] - cumulative[b] for b in range(len(starts))]


def _lowest(scores: Tensor, count: int) -> Tensor:
    """Bool mask of the `count` lowest scores (among equal scores the later position goes first)."""
    order = torch.sort(scores.reshape(-1), descending=True, stable=True).indices
    out = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    out[order[scores.numel() - count:]] = True
    return out.view(scores.shape)


def sparsegpt_prune(
    weight: Tensor,
    hessian: Tensor,
    *,
    keep: int | None = None,
    pattern: NMPattern | None = None,
    blocksize: int = DEFAULT_BLOCKSIZE,
    dampening: float = DEFAULT_DAMPENING,
) -> tuple[Tensor, Tensor]:
    """(updated weight, bool keep mask) for a [out, in] `weight` and its [in, in] Hessian `hessian`.

    Exactly `keep` weights are kept (unstructured), or N of every M along the input (`pattern`). Computes in
    float64 for a float64 weight, float32 otherwise; the result has the weight's dtype and is exactly zero
    wherever the mask prunes. `hessian` is left unchanged.
    """
    cols = weight.shape[1]
    if hessian.shape != (cols, cols):
        raise UsageError(f"sparsegpt needs a [{cols}, {cols}] Hessian for a {weight.shape[0]}x{cols} weight; "
                         f"got {tuple(hessian.shape)}")
    _check_budget(weight, keep, pattern, blocksize)
    factor = inverse_cholesky(hessian.detach().to(device=weight.device, dtype=compute_dtype(weight)), dampening)
    return sparsegpt_prune_factored(weight, factor, keep=keep, pattern=pattern, blocksize=blocksize)


def compute_dtype(weight: Tensor) -> torch.dtype:
    """float64 for a float64 weight, float32 otherwise (half-precision weights are pruned in float32)."""
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


def _check_budget(weight: Tensor, keep: int | None, pattern: NMPattern | None, blocksize: int) -> None:
    rows, cols = weight.shape
    if (keep is None) == (pattern is None):
        raise UsageError("sparsegpt_prune needs exactly one of keep= (unstructured) or pattern= (N:M)")
    if pattern is not None and (blocksize % pattern.m or cols % pattern.m):
        raise UsageError(f"N:M {pattern} needs the block size ({blocksize}) and the inputs ({cols}) divisible by "
                         f"{pattern.m}")
    if keep is not None and not 0 <= keep <= rows * cols:
        raise UsageError(f"cannot keep {keep} weights of a {rows}x{cols} layer")


def sparsegpt_prune_factored(
    weight: Tensor,
    factor: Tensor,
    *,
    keep: int | None = None,
    pattern: NMPattern | None = None,
    blocksize: int = DEFAULT_BLOCKSIZE,
) -> tuple[Tensor, Tensor]:
    """`sparsegpt_prune` from the factor U of the Hessian's inverse (`inverse_cholesky`, in `compute_dtype`) instead
    of the Hessian: linears that read the same input (q, k, v) share one Hessian and so one factor."""
    rows, cols = weight.shape
    if factor.shape != (cols, cols) or factor.dtype != compute_dtype(weight):
        raise UsageError(f"sparsegpt needs a [{cols}, {cols}] {compute_dtype(weight)} factor for a {rows}x{cols} "
                         f"{weight.dtype} weight; got {tuple(factor.shape)} {factor.dtype}")
    _check_budget(weight, keep, pattern, blocksize)
    w = weight.detach().to(factor.dtype, copy=True)
    pruned = torch.zeros(rows, cols, dtype=torch.bool, device=w.device)
    starts = list(range(0, cols, blocksize))
    counts = block_prune_counts(rows * cols - keep, rows, cols, starts) if keep is not None else None
    for b, i1 in enumerate(starts):
        i2 = min(i1 + blocksize, cols)
        block, factor_block = w[:, i1:i2].clone(), factor[i1:i2, i1:i2]
        diag = factor_block.diagonal()
        block_pruned = pruned[:, i1:i2]
        if counts is not None:
            block_pruned.copy_(_lowest(block.square() / diag.square().unsqueeze(0), counts[b]))
        errors = torch.zeros_like(block)
        for i in range(i2 - i1):
            if pattern is not None and i % pattern.m == 0:
                group = slice(i, i + pattern.m)
                saliency = block[:, group].square() / diag[group].square().unsqueeze(0)
                block_pruned[:, group] = ~nm_keep_mask(saliency, pattern)
            error = errors[:, i]
            torch.mul(block[:, i], block_pruned[:, i], out=error).div_(diag[i])
            block[:, i:].addr_(error, factor_block[i, i:], alpha=-1.0)  # rank-1 update in place (BLAS ger)
        block.masked_fill_(block_pruned, 0.0)
        w[:, i1:i2] = block
        w[:, i2:] -= errors @ factor[i1:i2, i2:]
    return w.to(weight.dtype), ~pruned


def sparsegpt_prune_group(
    weights: Sequence[Tensor],
    hessian: Tensor,
    keeps: Sequence[int | None],
    *,
    pattern: NMPattern | None = None,
    blocksize: int = DEFAULT_BLOCKSIZE,
    dampening: float = DEFAULT_DAMPENING,
) -> Iterator[tuple[Tensor, Tensor]]:
    """(updated weight, keep mask) of each of `weights`, linears that read the same input and so share `hessian`:
    one factor for all, computed in the Hessian's buffer, which this overwrites when the Hessian is contiguous and
    already in the weights' `compute_dtype` (else in a converted copy). A generator, so the caller can write each
    result back before the next weight is pruned: memory holds the Hessian and one weight's working copy."""
    cols = weights[0].shape[1]
    if hessian.shape != (cols, cols):
        raise UsageError(f"sparsegpt needs a [{cols}, {cols}] Hessian for a {weights[0].shape[0]}x{cols} weight; "
                         f"got {tuple(hessian.shape)}")
    factor = inverse_cholesky_(hessian.detach().to(compute_dtype(weights[0])).contiguous(), dampening)
    for weight, keep in zip(weights, keeps, strict=True):
        yield sparsegpt_prune_factored(weight, factor, keep=keep, pattern=pattern, blocksize=blocksize)


def reconstruction_error(weight: Tensor, pruned_weight: Tensor, hessian: Tensor) -> float:
    """||W X - W' X||_F^2 from the Hessian H = X X^T: trace((W - W') H (W - W')^T), in float64."""
    delta = (weight.detach().double() - pruned_weight.detach().double())
    return float(((delta @ hessian.double()) * delta).sum())
