"""Exact top-k keep masks over one tensor or many, without a global float copy of the scores.

Selection is exact (DESIGN invariant 3): asked to keep `k` weights, it keeps exactly `k`. Ties are
broken deterministically: among equal scores the weight that comes first (layers in the given
order, then flat index within a layer) is kept. That equals a stable descending sort of all
scores concatenated, which `reference_keep_masks` implements as the test oracle.

Global selection never concatenates or sorts all scores (invariant 4). Scores are produced
lazily, chunk by chunk, by a `LayerScores`; the k-th largest score is found from a small random
sample that brackets it, one counting pass that gathers only the scores inside the bracket, and
one pass that writes the bool masks. Peak extra memory is the masks plus a few chunks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

CHUNK_SIZE = 1 << 22
SAMPLE_SIZE = 1 << 18
_NEG_INF = float("-inf")


def keep_count(density: float, numel: int) -> int:
    """Number of weights to keep at `density`: round half up, so counts never depend on float noise."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1]; got {density!r}")
    return min(numel, int(math.floor(density * numel + 0.5)))


@dataclass(frozen=True)
class LayerScores:
    """Importance scores of one tensor, computed on demand so no full-size copy is ever held.

    `values(start, stop)` returns float scores of flat positions `[start, stop)`; it must return the
    same numbers every time it is called. `at(index)` optionally returns scores at arbitrary flat
    positions (used to sample). Positions where `within` is False are never kept.
    """

    numel: int
    values: Callable[[int, int], Tensor]
    within: Tensor | None = None
    at: Callable[[Tensor], Tensor] | None = None
    device: torch.device = torch.device("cpu")

    def within_count(self) -> int:
        return self.numel if self.within is None else int(torch.count_nonzero(self.within))


def as_scores(x: Tensor) -> Tensor:
    """Scores in a float dtype that ranks them exactly: float64 stays, integers go to float64,
    half precision and float32 to float32."""
    if x.dtype == torch.float64:
        return x
    if not x.is_floating_point():
        return x.to(torch.float64)
    return x.float()


def tensor_scores(
    tensor: Tensor, transform: Callable[[Tensor], Tensor] | None = None, within: Tensor | None = None
) -> LayerScores:
    """Scores read from `tensor` (optionally through an elementwise `transform`, e.g. `torch.abs`)."""
    flat = tensor.detach().reshape(-1)
    fn = transform or (lambda x: x)
    return LayerScores(
        numel=flat.numel(),
        values=lambda start, stop: as_scores(fn(flat[start:stop])),
        within=None if within is None else within.reshape(-1),
        at=lambda index: as_scores(fn(flat[index.to(flat.device)])),
        device=flat.device,
    )


def magnitude_scores(weight: Tensor, within: Tensor | None = None) -> LayerScores:
    """|w|: the magnitude criterion (OMP, GMP, LTH, RigL's drop step)."""
    return tensor_scores(weight, torch.abs, within)


def product_scores(weight: Tensor, grad: Tensor, within: Tensor | None = None) -> LayerScores:
    """|w * g|: SNIP's connection sensitivity, computed per chunk."""
    w, g = weight.detach().reshape(-1), grad.detach().reshape(-1)
    return LayerScores(
        numel=w.numel(),
        values=lambda start, stop: as_scores((w[start:stop] * g[start:stop]).abs()),
        within=None if within is None else within.reshape(-1),
        at=lambda index: as_scores((w[index.to(w.device)] * g[index.to(w.device)]).abs()),
        device=w.device,
    )


def random_scores(
    numel: int, seed: int, within: Tensor | None = None, device: torch.device | str = "cpu"
) -> LayerScores:
    """Uniform random scores, reproducible chunk by chunk from `seed` (identical on every process)."""

    def values(start: int, stop: int) -> Tensor:
        out = torch.empty(stop - start)
        pos = start
        while pos < stop:  # generate whole aligned chunks so any slice is reproducible
            block = pos // CHUNK_SIZE
            gen = torch.Generator().manual_seed(mix_seed(seed, block))
            full = torch.rand(min(CHUNK_SIZE, numel - block * CHUNK_SIZE), generator=gen)
            lo, hi = pos - block * CHUNK_SIZE, min(stop, (block + 1) * CHUNK_SIZE) - block * CHUNK_SIZE
            out[pos - start : pos - start + hi - lo] = full[lo:hi]
            pos += hi - lo
        return out.to(device)

    return LayerScores(
        numel=numel,
        values=values,
        within=None if within is None else within.reshape(-1),
        device=torch.device(device),
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
    """Flat bool masks keeping exactly the `k` highest scores among all `within` positions of `sources`."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive; got {chunk_size}")
    available = sum(s.within_count() for s in sources.values())
    if not 0 <= k <= available:
        raise ValueError(f"cannot keep {k} weights: {available} are selectable")
    if k == 0 or k == available:
        return {name: _all_or_within(src, keep=k > 0) for name, src in sources.items()}
    total = sum(s.numel for s in sources.values())
    sample = _sample_scores(sources, sample_size, total)
    for widen in (1, 4, 16, 64, None):
        lo, hi = _bracket(sample, k / total, widen)
        threshold = _threshold_in_bracket(sources, k, lo, hi, chunk_size)
        if threshold is not None:
            break
    else:  # pragma: no cover - the last bracket is (-inf, +inf] and always contains the threshold
        raise RuntimeError("selection bracket search failed")
    tau, n_greater = threshold
    return _write_masks(sources, tau, k - n_greater, chunk_size)


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


# ---------------------------------------------------------------------------------------------
# The three passes
# ---------------------------------------------------------------------------------------------


def _all_or_within(src: LayerScores, keep: bool) -> Tensor:
    if not keep:
        return torch.zeros(src.numel, dtype=torch.bool, device=src.device)
    if src.within is None:
        return torch.ones(src.numel, dtype=torch.bool, device=src.device)
    return src.within.clone()


def _chunks(src: LayerScores, chunk_size: int):
    """Yield (start, stop, scores, within) per chunk; excluded positions score -inf."""
    for start in range(0, src.numel, chunk_size):
        stop = min(start + chunk_size, src.numel)
        s = src.values(start, stop)
        w = None if src.within is None else src.within[start:stop]
        if w is not None:
            s = s.masked_fill(~w, _NEG_INF)
        yield start, stop, s, w


def _sample_scores(sources: Mapping[str, LayerScores], sample_size: int, total: int) -> Tensor:
    """A deterministic random sample of all scores (excluded positions as -inf), sorted descending."""
    gen = torch.Generator().manual_seed(0)
    parts = []
    for src in sources.values():
        if src.numel == 0:
            continue
        m = max(1, min(src.numel, math.ceil(sample_size * src.numel / total)))
        if src.at is not None:
            idx = torch.randint(src.numel, (m,), generator=gen)
            s = src.at(idx)
        else:  # contiguous blocks at random offsets
            block = max(1, m // 16)
            starts = torch.randint(max(1, src.numel - block + 1), (max(1, m // block),), generator=gen).tolist()
            idx = torch.cat([torch.arange(a, min(a + block, src.numel)) for a in starts])
            s = torch.cat([src.values(a, min(a + block, src.numel)) for a in starts])
        if src.within is not None:
            s = s.masked_fill(~src.within[idx.to(src.within.device)], _NEG_INF)
        parts.append(s.cpu())
    return torch.sort(torch.cat([p.to(torch.float64) for p in parts]), descending=True).values


def _bracket(sample: Tensor, keep_fraction: float, widen: int | None) -> tuple[float, float]:
    """Scores (lo, hi) that should enclose the k-th largest score; `widen=None` gives (-inf, +inf)."""
    if widen is None:
        return _NEG_INF, float("inf")
    m = sample.numel()
    rank = keep_fraction * m
    spread = widen * (4.0 * math.sqrt(max(rank * (1.0 - keep_fraction), 1.0)) + 8.0)
    hi_rank, lo_rank = math.floor(rank - spread), math.ceil(rank + spread)
    hi = float("inf") if hi_rank < 0 else float(sample[hi_rank])
    lo = _NEG_INF if lo_rank >= m else float(sample[lo_rank])
    return lo, hi


def _threshold_in_bracket(
    sources: Mapping[str, LayerScores], k: int, lo: float, hi: float, chunk_size: int
) -> tuple[float, int] | None:
    """Find (tau, n_greater): the k-th largest score and how many scores exceed it, or None if outside."""
    n_above, n_eq_hi, n_eq_lo, inside = 0, 0, 0, []
    for name, src in sources.items():
        for _, _, s, w in _chunks(src, chunk_size):
            if torch.isnan(s).any():
                raise ValueError(f"scores of {name!r} contain NaN; cannot rank weights")
            n_above += int(torch.count_nonzero(s > hi))
            if n_above >= k:  # the threshold is above the bracket: stop early
                return None
            eq_hi = s == hi
            if w is not None:
                eq_hi &= w
            n_eq_hi += int(torch.count_nonzero(eq_hi))
            if lo != hi:
                eq_lo = s == lo
                if w is not None:
                    eq_lo &= w
                n_eq_lo += int(torch.count_nonzero(eq_lo))
                inside.append(s[(s > lo) & (s < hi)].cpu())
    rank = k - n_above  # 1-based rank of tau among scores <= hi
    if rank <= n_eq_hi:
        return hi, n_above
    rank -= n_eq_hi
    between = torch.cat([x.to(torch.float64) for x in inside]) if inside else torch.empty(0, dtype=torch.float64)
    if rank <= between.numel():
        tau = float(torch.kthvalue(between, between.numel() - rank + 1).values)
        return tau, n_above + n_eq_hi + int(torch.count_nonzero(between > tau))
    rank -= between.numel()
    if lo != hi and rank <= n_eq_lo:
        return lo, n_above + n_eq_hi + between.numel()
    return None


def _write_masks(
    sources: Mapping[str, LayerScores], tau: float, ties_to_keep: int, chunk_size: int
) -> dict[str, Tensor]:
    """Keep every score > tau, plus the first `ties_to_keep` scores == tau in layer/index order."""
    out = {}
    for name, src in sources.items():
        mask = torch.empty(src.numel, dtype=torch.bool, device=src.device)
        for start, stop, s, w in _chunks(src, chunk_size):
            part = s > tau
            if ties_to_keep > 0:
                eq = s == tau
                if w is not None:
                    eq &= w
                n_eq = int(torch.count_nonzero(eq))
                if n_eq <= ties_to_keep:
                    part |= eq
                    ties_to_keep -= n_eq
                elif n_eq:
                    part[eq.nonzero().squeeze(1)[:ties_to_keep]] = True
                    ties_to_keep = 0
            mask[start:stop] = part
        out[name] = mask
    return out
