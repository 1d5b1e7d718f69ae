"""The passes behind `smc_trainer.engine.selection.select_topk`: sample, bracket, one pass, finishing.

1. A sample of about 2 N^(2/3) scores; two `kthvalue` calls give a bracket [lo, hi] that should
   contain the k-th largest score. An endpoint shared by many sampled scores (heavy ties, e.g. the
   zeros of an already pruned tensor) is "counted": its ties are counted per chunk, never gathered.
2. The pass. Per chunk: the scores into a reused buffer (`|w|` through `out=`), `s < lo` into a
   reused bool buffer, `s > hi` straight into the output mask, one count, the `==` of the two
   flag tensors (neither below nor above) as the in-bracket flags, and a gather of those few
   scores and their positions into two growing buffers. NaN fails both comparisons, so it is
   gathered and found on the small gathered tensor: there is no NaN sweep. Seven kernels per
   chunk, three of them over the floats; the floor (abs, compare, count) is three.
3. Finishing: the k-th largest score tau follows from the counts and one `kthvalue` on the
   in-bracket scores; the mask bits of the in-bracket scores > tau (and of the first ties at tau,
   in layer/index order) are set from the gathered positions. Only a counted tau (heavy ties)
   revisits chunks: those whose ties must be added or dropped.

A bracket that misses (the sample misled) costs one more pass with a wider bracket; the last one,
[-inf, +inf], always holds tau. Positions outside `within` count as below every score and never
tie with a kept one. Thresholds are compared in each chunk's own dtype through their float
neighbours there, so float32 scores ranked against float64 thresholds stay exact.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from smc_trainer.engine.selection import LayerScores

_NEG_INF = float("-inf")
_INF = float("inf")
MIN_SAMPLE = 1024  # below this a sample is too coarse to bracket anything, and costs microseconds anyway
HEAVY_TIES = 16  # an endpoint is counted, not gathered, when more sampled scores tie at it than this and than
#                   the sampled scores strictly inside the bracket (its ties would dominate the gather)
_SPARSE_WORDS = 16  # the word scan of `flat_nonzero` pays while at most 1 word in 16 holds a flag
_ARANGE8: dict[torch.device, Tensor] = {}


def score_dtype(dtype: torch.dtype) -> torch.dtype:
    """The float dtype that ranks values of `dtype` exactly: float64 for float64 and integers, else float32."""
    return torch.float64 if dtype == torch.float64 or not dtype.is_floating_point else torch.float32


def as_scores(x: Tensor) -> Tensor:
    """Scores in a float dtype that ranks them exactly: float64 stays, integers go to float64,
    half precision and float32 to float32."""
    return x if x.dtype in (torch.float32, torch.float64) else x.to(score_dtype(x.dtype))


def _count(flags: Tensor) -> int:
    return int(torch.count_nonzero(flags))


def nan_error(name: str) -> ValueError:
    return ValueError(f"scores of {name!r} contain NaN; cannot rank weights")


# ---------------------------------------------------------------------------------------------
# Reused buffers
# ---------------------------------------------------------------------------------------------


class Workspace:
    """Chunk buffers shared by every chunk of one selection: one float buffer per (device, dtype) and two
    bool buffers per device, allocated once, so the passes create no chunk-sized temporaries."""

    def __init__(self, sources: Mapping[str, LayerScores], chunk_size: int, dtype: torch.dtype):
        self.chunk = chunk_size
        self.size = max(1, min(chunk_size, max((s.numel for s in sources.values()), default=1)))
        self.dtype = dtype  # the dtype of the gathered in-bracket scores (the sample's)
        self.device = next((s.device for s in sources.values() if s.numel), torch.device("cpu"))
        self._floats: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        self._flags: dict[torch.device, Tensor] = {}
        self._neighbours: dict[tuple[float, torch.dtype], tuple[float, float]] = {}

    def scores(self, src: LayerScores, start: int, stop: int) -> Tensor:
        """Scores of `[start, stop)` of `src` (float32 or float64); read-only."""
        if src.into is None or src.dtype is None:
            return as_scores(src.values(start, stop))
        key = (src.device, src.dtype)
        if key not in self._floats:
            self._floats[key] = torch.empty(self.size, dtype=src.dtype, device=src.device)
        return src.into(start, stop, self._floats[key][: stop - start])

    def flags(self, device: torch.device, n: int) -> tuple[Tensor, Tensor]:
        """Two bool buffers of length `n`, each starting at a multiple of 8 bytes (see `flat_nonzero`)."""
        if device not in self._flags:
            self._flags[device] = torch.empty(2, -(-self.size // 8) * 8, dtype=torch.bool, device=device)
        rows = self._flags[device]
        return rows[0, :n], rows[1, :n]

    def neighbours(self, t: float, dtype: torch.dtype) -> tuple[float, float]:
        """(down, up): the largest `dtype` value <= t and the smallest >= t. For scores x of that dtype,
        x > t iff x > down, x <= t iff x <= down, x < t iff x < up, x >= t iff x >= up; x == t is possible
        only when down == up."""
        if dtype == torch.float64 or math.isinf(t):
            return t, t
        key = (t, dtype)
        if key not in self._neighbours:
            x = torch.tensor(t, dtype=torch.float64).to(dtype)
            v = float(x)
            if v == t:
                self._neighbours[key] = (t, t)
            elif v > t:
                self._neighbours[key] = (float(torch.nextafter(x, torch.tensor(_NEG_INF, dtype=dtype))), v)
            else:
                self._neighbours[key] = (v, float(torch.nextafter(x, torch.tensor(_INF, dtype=dtype))))
        return self._neighbours[key]

    def compare(self, op: Callable, s: Tensor, t: float, out: Tensor) -> Tensor:
        """`op(s, t, out=out)` for op in lt, le, gt, ge, exact in the dtype of `s`."""
        down, up = self.neighbours(t, s.dtype)
        return op(s, down if op in (torch.gt, torch.le) else up, out=out)

    def equal(self, s: Tensor, t: float, within: Tensor | None, out: Tensor) -> Tensor:
        """Flags of the `within` scores equal to t."""
        down, up = self.neighbours(t, s.dtype)
        if down != up:  # t is not a value of this dtype
            return out.fill_(False)
        torch.eq(s, down, out=out)
        return out if within is None else torch.logical_and(out, within, out=out)


class Gathered:
    """The in-bracket scores of one threshold pass and their chunk-relative positions, appended chunk by chunk
    into two growing buffers."""

    def __init__(self, capacity: int, dtype: torch.dtype, device: torch.device, chunk: int):
        capacity = max(1, capacity)
        self.scores = torch.empty(capacity, dtype=dtype, device=device)
        self.positions = torch.empty(capacity, dtype=torch.int32 if chunk < 2**31 else torch.int64, device=device)
        self.size = 0

    def extend(self, s: Tensor, index: Tensor) -> None:
        end = self.size + index.numel()
        if end > self.scores.numel():
            self.scores = self._grown(self.scores, end)
            self.positions = self._grown(self.positions, end)
        dest = self.scores[self.size : end]
        if s.dtype == dest.dtype and s.device == dest.device:
            torch.index_select(s, 0, index, out=dest)
        else:
            dest.copy_(s[index])
        self.positions[self.size : end] = index
        self.size = end

    def _grown(self, buffer: Tensor, need: int) -> Tensor:
        bigger = torch.empty(max(need, 2 * buffer.numel()), dtype=buffer.dtype, device=buffer.device)
        bigger[: self.size] = buffer[: self.size]
        return bigger

    def values(self, start: int = 0, stop: int | None = None) -> Tensor:
        return self.scores[start : self.size if stop is None else stop]


def flat_nonzero(flags: Tensor) -> Tensor:
    """Positions of the True entries of a contiguous 1-D bool tensor (like `flags.nonzero()[:, 0]`).

    CPU `nonzero` tests every byte. When few flags are set, viewing them as int64 words finds the
    non-zero words first (8 flags per test) and checks only their 8 positions: about 2x faster.
    """
    n = flags.numel()
    head = n - n % 8
    if flags.device.type != "cpu" or head == 0 or flags.storage_offset() % 8 or not flags.is_contiguous():
        return flags.nonzero().squeeze(1)
    words = flags[:head].view(torch.int64).nonzero().squeeze(1)
    if words.numel() * _SPARSE_WORDS > head // 8:  # dense: a plain scan is cheaper
        return flags.nonzero().squeeze(1)
    if flags.device not in _ARANGE8:
        _ARANGE8[flags.device] = torch.arange(8, device=flags.device)
    candidates = (words.unsqueeze(1) * 8 + _ARANGE8[flags.device]).reshape(-1)
    found = candidates[flags[candidates]]
    if head < n:
        found = torch.cat([found, flags[head:].nonzero().squeeze(1) + head])
    return found


# ---------------------------------------------------------------------------------------------
# 1. Sample and bracket
# ---------------------------------------------------------------------------------------------


def sample_count(total: int, cap: int) -> int:
    """Sample size for `total` scores: 2 total^(2/3), at least MIN_SAMPLE, at most `cap`. The sample costs ~m,
    the scores left in the bracket ~total / sqrt(m); m ~ total^(2/3) balances the two, and the factor 2 was the
    fastest on RoBERTa-large-like shapes (a 147K-weight layer samples 5.6K scores)."""
    return max(1, min(cap, max(MIN_SAMPLE, 2 * math.ceil(total ** (2.0 / 3.0)))))


def sample_scores(sources: Mapping[str, LayerScores], sample_size: int, total: int) -> Tensor:
    """A deterministic random sample of about `sample_size` scores (excluded positions as -inf), unsorted."""
    gen = torch.Generator().manual_seed(0)
    parts = []
    for name, src in sources.items():
        if src.numel == 0:
            continue
        m = max(1, min(src.numel, math.ceil(sample_size * src.numel / total)))
        if src.at is not None:
            idx = torch.randint(src.numel, (m,), generator=gen)
            s = as_scores(src.at(idx))
        else:  # contiguous blocks at random offsets
            block = max(1, m // 16)
            starts = torch.randint(max(1, src.numel - block + 1), (max(1, m // block),), generator=gen).tolist()
            idx = torch.cat([torch.arange(a, min(a + block, src.numel)) for a in starts])
            s = torch.cat([as_scores(src.values(a, min(a + block, src.numel))) for a in starts])
        if src.within is not None:
            s = s.masked_fill(~src.within[idx.to(src.within.device)], _NEG_INF)
        if bool(torch.isnan(s).any()):
            raise nan_error(name)
        parts.append(s.cpu())
    dtype = functools.reduce(torch.promote_types, (p.dtype for p in parts))
    return torch.cat([p.to(dtype) for p in parts])


@dataclass(frozen=True)
class Bracket:
    """Scores lo <= hi that should enclose the k-th largest score; a counted endpoint's ties are counted in the
    pass instead of gathered; `expected` estimates how many scores the pass gathers."""

    lo: float
    hi: float
    count_lo: bool
    count_hi: bool
    expected: int

    @property
    def point(self) -> bool:
        return self.lo == self.hi


def bracket(sample: Tensor, keep_fraction: float, widen: int | None, total: int) -> Bracket:
    """The bracket around rank `keep_fraction * m` of the sample, `widen` times the usual width; None: all."""
    m = sample.numel()
    if widen is None:
        lo, hi = _NEG_INF, _INF
    else:
        rank = keep_fraction * m
        spread = widen * (4.0 * math.sqrt(max(rank * (1.0 - keep_fraction), 1.0)) + 8.0)
        hi_rank, lo_rank = math.floor(rank - spread), math.ceil(rank + spread)  # 0-based, descending
        inside = [r for r in (hi_rank, lo_rank) if 0 <= r < m]
        ordered = sample.clone()  # partitioned in place: one copy, no index tensor (unlike `torch.kthvalue`)
        if inside:
            ordered.numpy().partition([m - 1 - r for r in inside])
        hi = _INF if hi_rank < 0 else float(ordered[m - 1 - hi_rank])
        lo = _NEG_INF if lo_rank >= m else float(ordered[m - 1 - lo_rank])
        del ordered
    if lo == hi:
        return Bracket(lo, hi, True, True, 0)
    inner = _count((sample > lo) & (sample < hi))
    at_lo, at_hi = _count(sample == lo), _count(sample == hi)
    heavy = max(HEAVY_TIES, inner)
    count_lo = lo == _NEG_INF or at_lo > heavy  # -inf: excluded positions are -inf in the sample too
    count_hi = at_hi > heavy
    gathered = inner + (0 if count_lo else at_lo) + (0 if count_hi else at_hi)
    return Bracket(lo, hi, count_lo, count_hi, min(total, math.ceil(1.25 * gathered * total / m) + 1024))


# ---------------------------------------------------------------------------------------------
# 2. Threshold pass (also writes every mask bit outside the bracket)
# ---------------------------------------------------------------------------------------------


def chunks(sources: Mapping[str, LayerScores], chunk: int):
    """(name, source, start, stop) of every chunk, in pass order."""
    for name, src in sources.items():
        for start in range(0, src.numel, chunk):
            yield name, src, start, min(start + chunk, src.numel)


@dataclass(frozen=True)
class Threshold:
    """tau, the k-th largest score, and what `write_masks` needs to finish the masks: how many scores equal to
    tau to keep (the first ones in layer/index order); the gathered in-bracket scores with their per-chunk
    spans; and, when tau is a counted endpoint, its per-chunk tie counts and whether the pass already set
    those ties in the masks (a counted hi) or not (a counted lo, a point bracket)."""

    tau: float
    keep_ties: int
    gathered: Gathered | None
    spans: list[tuple[int, int]]
    counted_ties: list[int] | None = None
    ties_in_masks: bool = False


def threshold_in_bracket(
    sources: Mapping[str, LayerScores], k: int, br: Bracket, work: Workspace, masks: Mapping[str, Tensor]
) -> Threshold | None:
    """The k-th largest score if it lies in the bracket, else None. Writes `s > hi` (`s >= hi` for a counted
    hi) into `masks`, so only the in-bracket positions and ties are left to `write_masks`."""
    below_op = torch.le if br.count_lo and not br.point else torch.lt
    above_op = torch.ge if br.count_hi and not br.point else torch.gt
    n_above, eq_lo, eq_hi, spans = 0, [], [], []
    gathered = None if br.point else Gathered(br.expected, work.dtype, work.device, work.size)
    for name, src, start, stop in chunks(sources, work.chunk):
        if start == 0:
            first = 0 if gathered is None else gathered.size
        s = work.scores(src, start, stop)
        w = None if src.within is None else src.within[start:stop]
        below, scratch = work.flags(src.device, stop - start)
        above = masks[name][start:stop]
        work.compare(below_op, s, br.lo, below)
        work.compare(above_op, s, br.hi, above)
        if w is not None:
            torch.le(w, below, out=below)  # bools: w <= below is (not w) or below; excluded count as below
            torch.logical_and(above, w, out=above)
        a = _count(above)
        if br.count_hi and not br.point:
            eq_hi.append(_count(work.equal(s, br.hi, w, scratch)))
            a -= eq_hi[-1]
        n_above += a
        if n_above >= k:  # the threshold is above the bracket: stop early
            return None
        if br.point:
            eq_lo.append(_count(work.equal(s, br.lo, w, scratch)))
            if _count(below) + a + eq_lo[-1] != stop - start:  # NaN is neither below, above nor equal
                raise nan_error(name)
            continue
        if br.count_lo:
            eq_lo.append(_count(work.equal(s, br.lo, w, scratch)))
        index = flat_nonzero(torch.eq(below, above, out=scratch))  # neither: in the bracket, or NaN
        spans.append((gathered.size, index.numel()))
        gathered.extend(s, index)
        if stop == src.numel and gathered.size > first and bool(torch.isnan(gathered.values(first)).any()):
            raise nan_error(name)
    return _resolve(k, n_above, br, eq_lo, eq_hi, gathered, spans)


def _resolve(k: int, n_above: int, br: Bracket, eq_lo: list[int], eq_hi: list[int],
             gathered: Gathered | None, spans: list[tuple[int, int]]) -> Threshold | None:
    """Walk down from the top: scores above hi, ties at hi, scores inside, ties at lo."""
    rank = k - n_above  # 1-based rank of tau among the scores <= hi
    if br.point:
        return Threshold(br.lo, rank, None, spans, eq_lo) if rank <= sum(eq_lo) else None
    g = gathered.values()
    n_hi = sum(eq_hi) if br.count_hi else _count(g == br.hi)
    if rank <= n_hi:
        if br.count_hi:
            return Threshold(br.hi, rank, gathered, spans, eq_hi, ties_in_masks=True)
        return Threshold(br.hi, rank, gathered, spans)
    rank -= n_hi
    inner = g[(g > br.lo) & (g < br.hi)]
    if rank <= inner.numel():
        tau = _kth_largest(inner, rank)
        return Threshold(tau, rank - _count(inner > tau), gathered, spans)
    rank -= inner.numel()
    n_lo = sum(eq_lo) if br.count_lo else _count(g == br.lo)
    if rank <= n_lo:
        return Threshold(br.lo, rank, gathered, spans, eq_lo if br.count_lo else None)
    return None


def _kth_largest(x: Tensor, rank: int) -> float:
    """The `rank`-th largest value (1-based) of a 1-D tensor that may be reordered in place. On CPU numpy's
    in-place introselect needs no memory, where `torch.kthvalue` copies the input and an int64 index."""
    position = x.numel() - rank
    if x.device.type == "cpu" and x.is_contiguous():
        x.numpy().partition(position)
        return float(x[position])
    return float(torch.kthvalue(x, position + 1).values)


# ---------------------------------------------------------------------------------------------
# 3. Finishing the masks
# ---------------------------------------------------------------------------------------------


def write_masks(sources: Mapping[str, LayerScores], th: Threshold, work: Workspace,
                masks: dict[str, Tensor]) -> dict[str, Tensor]:
    """Complete the masks of the threshold pass: keep the in-bracket scores > tau and the first `keep_ties`
    scores == tau. Gathered ties are resolved on the gathered scores; counted ones by revisiting the chunks
    that hold them (only as many as needed)."""
    if th.gathered is not None and th.gathered.size:
        g = th.gathered.values()
        keep = g > th.tau
        if th.counted_ties is None:  # tau's ties were gathered, in layer/index order
            keep[flat_nonzero(g == th.tau)[: th.keep_ties]] = True
        for (name, _, start, stop), (offset, n) in zip(chunks(sources, work.chunk), th.spans):
            if n:
                part = masks[name][start:stop]
                part[th.gathered.positions[offset : offset + n][keep[offset : offset + n]]] = True
    if th.counted_ties is not None:
        _settle_counted_ties(sources, th, work, masks)
    return masks


def _settle_counted_ties(sources: Mapping[str, LayerScores], th: Threshold, work: Workspace,
                         masks: dict[str, Tensor]) -> None:
    """Keep exactly the first `keep_ties` ties at a counted tau: add them (masks hold none of them yet) or drop
    the rest (masks hold all of them), revisiting only the chunks where something changes."""
    need = th.keep_ties
    for (name, src, start, stop), n in zip(chunks(sources, work.chunk), th.counted_ties):
        if need == 0 and not th.ties_in_masks:
            break
        if n == 0:
            continue
        if th.ties_in_masks and n <= need:  # all of this chunk's ties are kept, and already set
            need -= n
            continue
        first = min(n, need)  # this chunk keeps its first `first` ties
        need -= first
        s = work.scores(src, start, stop)
        w = None if src.within is None else src.within[start:stop]
        equal = work.equal(s, th.tau, w, work.flags(src.device, stop - start)[1])
        part = masks[name][start:stop]
        if th.ties_in_masks:
            if first == 0:
                torch.gt(part, equal, out=part)  # bools: part > equal is part and not equal
            else:
                part[flat_nonzero(equal)[first:]] = False
        elif first == n:
            torch.logical_or(part, equal, out=part)
        else:
            part[flat_nonzero(equal)[:first]] = True
