"""oBERT's block-diagonal inverse Fisher, built from buffered gradients, and its OBS update in batched solves.

Per block of B consecutive weights, F = lambda I + (1/m) sum_i g_i g_i^T. Applying the m gradients one
Sherman-Morrison step at a time reads and writes all N x B stored values per gradient (memory-bound). Here
gradients are buffered k at a time (k from a memory budget) and added to F as one batched product G G^T per
chunk of blocks (compute-bound, k times fewer passes over the store); F is inverted once at the end by a
batched Cholesky in float64, which is also more accurate than m float32 rank-1 steps (benchmarks/bench_obert_kd.py
measures both). B = 1 is the closed form 1 / (lambda + mean g^2), elementwise.

The store holds scale * F while accumulating and (scale * F)^-1 after `finish`, scale an exact power of two that
brings F's diagonal near 1, so float16/bfloat16 storage keeps its range (F^-1 reaches 1/lambda = 1e7 at the
paper's dampening, past float16's 65504). The OBS update is invariant to that scale.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

CHUNK_BLOCKS = 1024  # blocks per inversion / OBS chunk: working copies of 1024 x B x B values stay in cache
ACCUMULATE_BLOCKS = 8192  # blocks per batched G G^T product: in place on the store, larger batches run faster
INVERT_DTYPE = torch.float64  # Cholesky precision: m rank-1 steps' worth of rounding is paid once, at double


def buffer_grads(budget_bytes: float, numel: int, num_grads: int, itemsize: int = 4) -> int:
    """Gradients to buffer per rank-k step so that k x `numel` values of `itemsize` bytes fit `budget_bytes`."""
    return max(1, min(num_grads, int(budget_bytes // max(1, numel * itemsize))))


class BlockFisherInverse:
    """F^-1 of one flat weight vector of `numel` values, as (n_blocks, B, B) blocks, built from rank-k steps.

    `add_gradient` each of the `num_grads` gradients, then `finish` (called by `diagonal` and `obs_delta` too).
    """

    def __init__(self, numel: int, block: int, dampening: float, num_grads: int, dtype: torch.dtype,
                 device: torch.device, buffer: int = 1):
        self.numel, self.block, self.dampening, self.num_grads = numel, block, dampening, num_grads
        self.n_blocks = -(-numel // block)
        self.dtype, self.device = dtype, device
        self.compute_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        self.scale: float | None = None  # power of two, fixed by the first gradients
        self.finished = False
        self._filled = 0
        if block == 1:
            self._sum_sq = torch.zeros(numel, dtype=self.compute_dtype, device=device)
            self.finv = torch.empty(0, 1, 1, dtype=dtype, device=device)
        else:  # accumulates scale * sum g g^T; the padding rows of the buffer stay zero
            self.finv = torch.zeros(self.n_blocks, block, block, dtype=dtype, device=device)
            self._buffer = torch.zeros(max(1, min(buffer, num_grads)), self.n_blocks * block,
                                       dtype=self.compute_dtype, device=device)

    def blocks_of(self, flat: Tensor, fill: float = 0.0) -> Tensor:
        """A flat vector of `numel` values as (n_blocks, B), padded with `fill`."""
        pad = self.n_blocks * self.block - self.numel
        flat = flat.reshape(-1).to(self.compute_dtype)
        if pad:
            flat = torch.cat([flat, flat.new_full((pad,), fill)])
        return flat.view(self.n_blocks, self.block)

    def _set_scale(self, sum_sq_max: float, count: int) -> None:
        mean = sum_sq_max / max(1, count)
        self.scale = 2.0 ** -round(math.log2(mean)) if mean > 0 and math.isfinite(mean) else 1.0

    @torch.no_grad()
    def add_gradient(self, grad: Tensor) -> None:
        """Buffer one gradient; a full buffer is added to F in one batched product."""
        if self.finished:
            raise RuntimeError("BlockFisherInverse.add_gradient after finish: the inverse is already built")
        flat = grad.reshape(-1)
        if self.block == 1:
            self._sum_sq.addcmul_(flat, flat)
            return
        self._buffer[self._filled, : self.numel].copy_(flat)
        self._filled += 1
        if self._filled == self._buffer.shape[0]:
            self._flush()

    def _flush(self) -> None:
        k, b = self._filled, self.block
        if k == 0:
            return
        grads = self._buffer[:k].view(k, self.n_blocks, b)
        if self.scale is None:
            self._set_scale(float(grads.square().sum(0).max()), k)
        for start in range(0, self.n_blocks, ACCUMULATE_BLOCKS):
            part = slice(start, start + ACCUMULATE_BLOCKS)
            g = grads[:, part].permute(1, 2, 0)  # (chunk, B, k), strided: bmm reads it faster than a copy
            if self.dtype == self.compute_dtype:
                self.finv[part].baddbmm_(g, g.transpose(1, 2), alpha=self.scale)
            else:
                f = torch.baddbmm(self.finv[part].to(self.compute_dtype), g, g.transpose(1, 2), alpha=self.scale)
                self.finv[part] = f.to(self.dtype)
        self._filled = 0

    @torch.no_grad()
    def finish(self) -> None:
        """Invert: (scale F)^-1 in the store, one batched Cholesky per chunk (B = 1: elementwise)."""
        if self.finished:
            return
        m = self.num_grads
        if self.block == 1:
            if self.scale is None:
                self._set_scale(float(self._sum_sq.max()), m)
            inv = 1.0 / (self.scale * (self.dampening + self._sum_sq / m))
            self.finv = inv.to(self.dtype).view(-1, 1, 1)
            del self._sum_sq
        else:
            self._flush()
            del self._buffer
            if self.scale is None:
                self.scale = 1.0
            floor = self.scale * self.dampening
            for start in range(0, self.n_blocks, CHUNK_BLOCKS):
                part = slice(start, start + CHUNK_BLOCKS)
                f = self.finv[part].to(INVERT_DTYPE).div_(m)
                f.diagonal(dim1=1, dim2=2).add_(floor)
                self.finv[part] = spd_inverse(f, floor)
        self.finished = True

    def diagonal(self) -> Tensor:
        """[F^-1]_qq for every weight, flat (padding dropped)."""
        self.finish()
        return self.finv.diagonal(dim1=1, dim2=2).reshape(-1)[: self.numel].to(self.compute_dtype) * self.scale

    @torch.no_grad()
    def obs_delta(self, weight: Tensor, keep: Tensor) -> Tensor:
        """The OBS update of `weight` (flat) that removes every position `keep` leaves out, block by block."""
        self.finish()
        w = self.blocks_of(weight)
        pruned = ~self.blocks_of(keep.float(), fill=1.0).bool()
        delta = torch.zeros_like(w)
        touched = pruned.any(1).nonzero().squeeze(1)
        for start in range(0, touched.numel(), CHUNK_BLOCKS):
            idx = touched[start : start + CHUNK_BLOCKS]
            delta[idx] = obs_blocks(self.finv[idx].to(self.compute_dtype), pruned[idx], w[idx])
        return delta.reshape(-1)[: self.numel]


def spd_inverse(f: Tensor, floor: float) -> Tensor:
    """Inverses of a batch of symmetric positive-definite matrices by Cholesky. A block that rounding left
    indefinite (the stored F is only F to storage precision) is inverted with its eigenvalues raised to `floor`,
    the least eigenvalue the exact F can have."""
    chol, info = torch.linalg.cholesky_ex(f)
    inv = torch.cholesky_inverse(chol)
    bad = (info != 0).nonzero().squeeze(1)
    if bad.numel():
        logger.warning(f"oBERT: {bad.numel()} Fisher blocks not positive definite at storage precision; their "
                       f"eigenvalues are raised to the dampening (a larger --obert_dampening avoids this)")
        vals, vecs = torch.linalg.eigh(f[bad])
        inv[bad] = (vecs / vals.clamp_min(floor).unsqueeze(1)) @ vecs.transpose(1, 2)
    return inv


def obs_blocks(finv: Tensor, pruned: Tensor, w: Tensor) -> Tensor:
    """dw = -F^-1 E_Q (F^-1_QQ)^-1 w_Q for a batch of blocks (finv (n, B, B), pruned and w (n, B)).

    A block with one pruned weight q takes the closed form -F^-1[:, q] w_q / F^-1_qq; the others solve
    M x = P w with M = P F^-1 P + (I - P) (so x_Q = (F^-1_QQ)^-1 w_Q, x = 0 elsewhere) by one batched Cholesky.
    """
    delta = torch.empty_like(w)
    single = pruned.sum(1) == 1
    one, many = single.nonzero().squeeze(1), (~single).nonzero().squeeze(1)
    if one.numel():
        q = pruned[one].to(torch.int8).argmax(1, keepdim=True)
        fq = finv[one, :, q.squeeze(1)]  # column q of each block
        delta[one] = -fq * (w[one].gather(1, q) / fq.gather(1, q))
    if many.numel():
        f, p = finv[many], pruned[many]
        system = f.masked_fill(~(p.unsqueeze(2) & p.unsqueeze(1)), 0.0)
        system.diagonal(dim1=1, dim2=2).add_((~p).to(w.dtype))
        rhs = w[many].masked_fill(~p, 0.0).unsqueeze(2)
        chol, info = torch.linalg.cholesky_ex(system)
        x = torch.cholesky_solve(rhs, chol)
        bad = (info != 0).nonzero().squeeze(1)
        if bad.numel():  # F^-1_QQ too ill-conditioned for a float32 Cholesky: solve those in float64
            x[bad] = torch.linalg.solve(system[bad].double(), rhs[bad].double()).to(x.dtype)
        delta[many] = -torch.bmm(f, x).squeeze(2)
    return delta
