"""N:M semi-structured patterns: in every group of M consecutive weights along the input dimension, exactly N kept.

The input dimension is the one a matmul reduces over (dim 1 of a Linear or recurrent weight, dim 0 of a
transposed `Conv1D`; embeddings group along their hidden dimension, dim 1). 2:4 is the pattern NVIDIA sparse
tensor cores run (`torch.sparse.to_sparse_semi_structured`). Selection is exact and deterministic: within a
group the N highest scores are kept, and among equal scores the earlier position wins (as in
`smc_trainer.engine.selection`).

Iterative pruning (LTH/LRR) reaches a pattern in rounds whose sparsities lie below it: each such round keeps
its exact budget with at least N of every M (`nm_floor_masks`), so the last round can keep exactly N of every M
within the mask before it (`nm_keep_mask(..., within=)`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from smc_trainer.engine.selection import LayerScores, select_topk
from smc_trainer.errors import UsageError

UNSTRUCTURED = "unstructured"
_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class NMPattern:
    """Keep `n` of every `m` consecutive weights along the input dimension."""

    n: int
    m: int

    @property
    def density(self) -> float:
        return self.n / self.m

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def parse_pattern(text: str | None) -> NMPattern | None:
    """`"2:4"` -> NMPattern(2, 4); `"unstructured"` or None -> None; anything else is a UsageError."""
    if text is None or text.strip().lower() == UNSTRUCTURED:
        return None
    match = _PATTERN.match(text)
    if match is None:
        raise UsageError(f"--sparsity_pattern must be 'unstructured' or N:M (e.g. 2:4, 4:8); got {text!r}")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise UsageError(f"--sparsity_pattern N:M needs 0 < N < M (e.g. 2:4); got {text!r}")
    return NMPattern(n, m)


def _grouped(tensor: Tensor, m: int, input_dim: int) -> Tensor:
    """`tensor` as [groups, m] with each row one group of m consecutive entries along `input_dim`."""
    if tensor.dim() != 2 or input_dim not in (0, 1):
        raise UsageError(f"N:M patterns need 2-D weights and input_dim 0 or 1; got shape {tuple(tensor.shape)}, "
                         f"input_dim {input_dim}")
    if tensor.shape[input_dim] % m:
        raise UsageError(f"a weight of shape {tuple(tensor.shape)} has {tensor.shape[input_dim]} inputs, "
                         f"not divisible by M={m}")
    rows = tensor if input_dim == 1 else tensor.t()
    return rows.reshape(-1, m)


def _ungrouped(groups: Tensor, shape: torch.Size, input_dim: int) -> Tensor:
    if input_dim == 1:
        return groups.reshape(shape)
    return groups.reshape(shape[1], shape[0]).t().contiguous()


def nm_keep_mask(scores: Tensor, pattern: NMPattern, input_dim: int = 1, within: Tensor | None = None) -> Tensor:
    """Bool mask keeping the `n` highest scores of every group of `m` (ties: the earlier position).

    With `within` (a bool mask shaped like `scores`) only its True positions compete, so a mask never regrows;
    every group must then hold at least `n` of them (an iterative chain's rounds before the last ensure it).
    """
    groups = _grouped(scores.detach(), pattern.m, input_dim)
    order = torch.sort(groups, dim=1, descending=True, stable=True).indices
    if within is not None:
        allowed = _grouped(within.reshape(scores.shape), pattern.m, input_dim)
        short = int((allowed.sum(dim=1) < pattern.n).sum())
        if short:
            raise UsageError(f"N:M {pattern} within the current mask: {short} group(s) of {pattern.m} keep fewer "
                             f"than {pattern.n} weights, so the pattern cannot be reached without regrowing")
        # allowed positions first, each part still in descending score order (both sorts are stable)
        allowed_in_order = allowed.gather(1, order).to(torch.int8)
        order = order.gather(1, torch.sort(allowed_in_order, dim=1, descending=True, stable=True).indices)
    keep = torch.zeros(groups.shape, dtype=torch.bool, device=groups.device)
    keep.scatter_(1, order[:, : pattern.n], True)
    return _ungrouped(keep, scores.shape, input_dim)


def nm_floor_masks(
    sources: Mapping[str, LayerScores],
    layouts: Mapping[str, tuple[torch.Size, int]],
    pattern: NMPattern,
    keep: int | Mapping[str, int],
) -> dict[str, Tensor]:
    """Keep exactly `keep` weights (one budget over all sources, or a count per source) with at least `n` of every
    group of `m` kept: each group's `n` highest scores (within each source's `within`) first, then the rest of
    the budget to the highest remaining scores, over all sources together (one int) or per source (a mapping).

    `layouts` gives each source's (shape, input_dim). The rounds of an iterative chain below the pattern's
    sparsity use it, so the last round can keep exactly `n` of every `m` without regrowing a weight. Returns bool
    masks shaped like the weights.
    """
    forced: dict[str, Tensor] = {}
    rest: dict[str, LayerScores] = {}
    for name, src in sources.items():
        shape, input_dim = layouts[name]
        within = None if src.within is None else src.within.view(shape)
        floor = nm_keep_mask(src.values(0, src.numel).view(shape), pattern, input_dim, within).reshape(-1)
        forced[name] = floor
        rest[name] = dataclasses.replace(src, within=~floor if src.within is None else src.within & ~floor)
    if isinstance(keep, int):
        extra = select_topk(rest, _beyond_floor(keep, sum(int(f.sum()) for f in forced.values()), pattern, "all"))
    else:
        extra = {}
        for name, src in rest.items():
            extra.update(select_topk({name: src}, _beyond_floor(keep[name], int(forced[name].sum()), pattern, name)))
    return {name: (forced[name] | extra[name]).view(layouts[name][0]) for name in sources}


def _beyond_floor(keep: int, floor: int, pattern: NMPattern, where: str) -> int:
    if keep < floor:
        raise UsageError(f"keeping at least {pattern.n} of every {pattern.m} weights needs {floor} kept weights "
                         f"({where}); the budget is {keep}")
    return keep - floor


def nm_violations(mask: Tensor, pattern: NMPattern, input_dim: int = 1) -> int:
    """Number of groups of `mask` that do not keep exactly `n` of `m` (0 when the pattern holds)."""
    counts = _grouped(mask, pattern.m, input_dim).sum(dim=1)
    return int((counts != pattern.n).sum())


def check_pattern_shapes(targets: Iterable, pattern: NMPattern) -> None:
    """UsageError naming every prunable weight whose input dimension is not a multiple of M (before any work)."""
    bad = [f"{t.name} {tuple(t.param.shape)}" for t in targets if t.param.shape[t.input_dim] % pattern.m]
    if bad:
        raise UsageError(f"--sparsity_pattern {pattern} needs every prunable weight's input dimension divisible by "
                         f"{pattern.m}; these are not: {', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''} "
                         "(leave them out with --prune_exclude, or pick another M)")
