"""Exact top-k keep masks over one tensor or many, without a global float copy of the scores.

Selection is exact (DESIGN invariant 3): asked to keep `k` weights, it keeps exactly `k`. Ties are
broken deterministically: among equal scores the weight that comes first (layers in the given
order, then flat index within a layer) is kept. That equals a stable descending sort of all
scores concatenated, which `reference_keep_masks` implements as the test oracle.

Global selection never concatenates or sorts all scores (invariant 4). Scores are produced
lazily, chunk by chunk, by a `LayerScores`. A small random sample (about 2 N^(2/3) scores) gives a
bracket [lo, hi] around the k-th largest score. One pass over the scores then writes every mask
bit outside the bracket in place and gathers only the few scores inside it (about 4 N / sqrt(sample)),
whose order statistic `kthvalue` finds; the in-bracket bits are set from the gathered positions.
The pass reuses a few preallocated chunk buffers, so the extra memory is the masks plus a few
chunks and the in-bracket scores (see `smc_trainer.engine.selection_passes`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from smc_trainer.engine.random_stream import uniform_into
from smc_trainer.engine.selection_passes import Workspace, as_scores, score_dtype
from smc_trainer.engine.selection_passes import bracket as _bracket
from smc_trainer.engine.selection_passes import sample_count as _sample_count
from smc_trainer.engine.selection_passes import sample_scores as _sample_scores
from smc_trainer.engine.selection_passes import threshold_in_bracket as _threshold_in_bracket
from smc_trainer.engine.selection_passes import write_masks as _write_masks
from smc_trainer.errors import UsageError

CHUNK_SIZE = 1 << 20  # 4 MiB of float32: a chunk's scores and flags stay in cache between the kernels
SAMPLE_SIZE = 1 << 20
_NEG_INF = float("-inf")
_INF = float("inf")


def keep_count(density: float, numel: int) -> int:
    """Number of weights to keep at `density`: round half up, so counts never depend on float noise."""
    if not 0.0 <= density <= 1.0:
        raise UsageError(f"density must be in [0, 1]; got {density!r}")
    return min(numel, int(math.floor(density * numel + 0.5)))


@dataclass(frozen=True)
class LayerScores:
    """Importance scores of one tensor, computed on demand so no full-size copy is ever held.

    `values(start, stop)` returns float scores of flat positions `[start, stop)`; it must return the
    same numbers every time it is called. `at(index)` optionally returns scores at arbitrary flat
    positions (used to sample). Positions where `within` is False are never kept.

    `into(start, stop, out)` optionally computes the same scores as `values` into `out`, a buffer of
    `dtype` on `device`, and returns it, or returns a tensor it must not write to (a view of the
    source) when no computation is needed. With it the chunk passes allocate nothing per chunk.
    """

    numel: int
    values: Callable[[int, int], Tensor]
    within: Tensor | None = None
    at: Callable[[Tensor], Tensor] | None = None
    device: torch.device = torch.device("cpu")
    into: Callable[[int, int, Tensor], Tensor] | None = None
    dtype: torch.dtype | None = None

    def within_count(self) -> int:
        return self.numel if self.within is None else int(torch.count_nonzero(self.within))


def tensor_scores(
    tensor: Tensor, transform: Callable[[Tensor], Tensor] | None = None, within: Tensor | None = None
) -> LayerScores:
    """Scores read from `tensor` (optionally through an elementwise `transform`, e.g. `torch.abs`)."""
    flat = tensor.detach().reshape(-1)
    fn = transform or (lambda x: x)
    into = _tensor_into(flat, transform)
    return LayerScores(
        numel=flat.numel(),
        values=lambda start, stop: as_scores(fn(flat[start:stop])),
        within=None if within is None else within.reshape(-1),
        at=lambda index: as_scores(fn(flat[index.to(flat.device)])),
        device=flat.device,
        into=into,
        dtype=None if into is None else score_dtype(flat.dtype),
    )


def _tensor_into(flat: Tensor, transform: Callable[[Tensor], Tensor] | None):
    """`into` for the identity and `torch.abs` (the transforms the methods use); None for others."""
    same = score_dtype(flat.dtype) == flat.dtype
    if transform is None:
        return (lambda a, b, out: flat[a:b]) if same else (lambda a, b, out: out.copy_(flat[a:b]))
    if transform is torch.abs:
        if same:
            return lambda a, b, out: torch.abs(flat[a:b], out=out)
        if flat.is_floating_point():  # half precision: convert, then abs (both exact)
            return lambda a, b, out: out.copy_(flat[a:b]).abs_()
        return lambda a, b, out: out.copy_(torch.abs(flat[a:b]))  # integers: abs in the integer type, as `values`
    return None


def magnitude_scores(weight: Tensor, within: Tensor | None = None) -> LayerScores:
    """|w|: the magnitude criterion (OMP, GMP, LTH, RigL's drop step)."""
    return tensor_scores(weight, torch.abs, within)


def product_scores(weight: Tensor, grad: Tensor, within: Tensor | None = None) -> LayerScores:
    """|w * g|: SNIP's connection sensitivity, computed per chunk."""
    w, g = weight.detach().reshape(-1), grad.detach().reshape(-1)
    product_dtype = torch.promote_types(w.dtype, g.dtype)
    dtype = score_dtype(product_dtype)

    def into(start: int, stop: int, out: Tensor) -> Tensor:
        if product_dtype == dtype:
            return torch.mul(w[start:stop], g[start:stop], out=out).abs_()
        return out.copy_((w[start:stop] * g[start:stop]).abs())

    return LayerScores(
        numel=w.numel(),
        values=lambda start, stop: as_scores((w[start:stop] * g[start:stop]).abs()),
        within=None if within is None else within.reshape(-1),
        at=lambda index: as_scores((w[index.to(w.device)] * g[index.to(w.device)]).abs()),
        device=w.device,
        into=into,
        dtype=dtype,
    )


def random_scores(
    numel: int, seed: int, within: Tensor | None = None, device: torch.device | str = "cpu"
) -> LayerScores:
    """Uniform [0, 1) float32 scores; score i depends only on (`seed`, i) (see `smc_trainer.engine.random_stream`),
    so any slice costs its own length and every process draws the same numbers."""
    device = torch.device(device)
    return LayerScores(
        numel=numel,
        values=lambda start, stop: uniform_into(seed, start, torch.empty(stop - start, device=device)),
        within=None if within is None else within.reshape(-1),
        device=device,
        into=lambda start, stop, out: uniform_into(seed, start, out),
        dtype=torch.float32,
    )


def mix_seed(seed: int, *parts: int) -> int:
    """Derive a 63-bit seed from several integers (splitmix-style), stable across runs and processes."""
    x = seed & 0xFFFFFFFFFFFFFFFF
    for part in parts:
        x = (x ^ (part + 0x9E3779B97F4A7C15 + ((x << 6) & 0xFFFFFFFFFFFFFFFF) + (x >> 2))) & 0xFFFFFFFFFFFFFFFF
        x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def global_keep_masks(scores: Mapping[str, Tensor], density: float) -> dict[str, Tensor]:
    """Keep the `round(density * N)` highest scores over all tensors together (one global threshold).

    Returns bool masks shaped like the inputs. Ties are broken by layer order, then flat index.
    """
    sources = {name: tensor_scores(t) for name, t in scores.items()}
    total = sum(s.numel for s in sources.values())
    masks = select_topk(sources, keep_count(density, total))
    return {name: masks[name].view(t.shape) for name, t in scores.items()}


def layer_keep_masks(scores: Mapping[str, Tensor], density: float) -> dict[str, Tensor]:
    """Keep the `round(density * N_l)` highest scores in each tensor separately."""
    return {
        name: select_topk({name: tensor_scores(t)}, keep_count(density, t.numel()))[name].view(t.shape)
        for name, t in scores.items()
    }


def select_topk(
    sources: Mapping[str, LayerScores], k: int, *, chunk_size: int = CHUNK_SIZE, sample_size: int = SAMPLE_SIZE
) -> dict[str, Tensor]:
    """Flat bool masks keeping exactly the `k` highest scores among all `within` positions of `sources`.

    `sample_size` caps the bracket sample (about N^(2/3) scores are drawn); `chunk_size` is the number
    of scores each pass handles at a time. Neither changes the result, only time and memory.
    """
    if chunk_size <= 0:
        raise UsageError(f"chunk_size must be positive; got {chunk_size}")
    available = sum(s.within_count() for s in sources.values())
    if not 0 <= k <= available:
        raise UsageError(f"cannot keep {k} weights: {available} are selectable")
    if k == 0 or k == available:
        return {name: _all_or_within(src, keep=k > 0) for name, src in sources.items()}
    total = sum(s.numel for s in sources.values())
    sample = _sample_scores(sources, _sample_count(total, sample_size), total)
    work = Workspace(sources, chunk_size, sample.dtype)
    masks = {name: torch.empty(src.numel, dtype=torch.bool, device=src.device) for name, src in sources.items()}
    for widen in (1, 4, 16, 64, None):
        threshold = _threshold_in_bracket(sources, k, _bracket(sample, k / total, widen, total), work, masks)
        if threshold is not None:
            break
    else:  # pragma: no cover - the last bracket is [-inf, +inf] and always contains the threshold
        raise RuntimeError("selection bracket search failed")
    return _write_masks(sources, threshold, work, masks)


def reference_keep_masks(sources: Mapping[str, LayerScores], k: int) -> dict[str, Tensor]:
    """Brute-force oracle: concatenate all scores, stable descending sort, keep the first k."""
    vals, positions, offset = [], [], 0
    for src in sources.values():
        v = src.values(0, src.numel)
        idx = torch.arange(src.numel, device=v.device)
        if src.within is not None:
            v, idx = v[src.within], idx[src.within]
        vals.append(v)
        positions.append(idx + offset)
        offset += src.numel
    order = torch.sort(torch.cat(vals), descending=True, stable=True).indices[:k]
    kept = torch.zeros(offset, dtype=torch.bool)
    kept[torch.cat(positions)[order].cpu()] = True
    out, offset = {}, 0
    for name, src in sources.items():
        out[name] = kept[offset : offset + src.numel].to(src.device)
        offset += src.numel
    return out


def _all_or_within(src: LayerScores, keep: bool) -> Tensor:
    if not keep:
        return torch.zeros(src.numel, dtype=torch.bool, device=src.device)
    if src.within is None:
        return torch.ones(src.numel, dtype=torch.bool, device=src.device)
    return src.within.clone()
