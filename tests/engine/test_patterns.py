"""N:M patterns: parsing, exact N of every M along the input dimension, deterministic ties, shape checks."""

from __future__ import annotations

import pytest
import torch

from smc_trainer.engine.patterns import (
    NMPattern,
    check_pattern_shapes,
    nm_keep_mask,
    nm_violations,
    parse_pattern,
)
from smc_trainer.engine.targets import find_targets


@pytest.mark.parametrize("text,expected", [("2:4", NMPattern(2, 4)), (" 4 : 8 ", NMPattern(4, 8)),
                                           ("1:16", NMPattern(1, 16)), ("unstructured", None), (None, None)])
def test_parse(text, expected):
    assert parse_pattern(text) == expected


@pytest.mark.parametrize("text", ["2/4", "4:4", "0:4", "5:4", "two:four", ""])
def test_parse_refuses_with_the_valid_forms(text):
    with pytest.raises(ValueError, match="sparsity_pattern"):
        parse_pattern(text)


def naive_nm(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Per group, a Python loop: keep the n largest, earlier index first among equals."""
    keep = torch.zeros_like(scores, dtype=torch.bool)
    for r in range(scores.shape[0]):
        for g in range(0, scores.shape[1], m):
            vals = scores[r, g:g + m].tolist()
            order = sorted(range(m), key=lambda j: (-vals[j], j))[:n]
            for j in order:
                keep[r, g + j] = True
    return keep


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 4), (4, 8), (1, 2)])
def test_exactly_n_of_every_m_equals_naive(n, m):
    gen = torch.Generator().manual_seed(n * 10 + m)
    scores = torch.randint(0, 4, (6, 4 * m), generator=gen).float()  # many ties
    pattern = NMPattern(n, m)
    mask = nm_keep_mask(scores, pattern)
    assert torch.equal(mask, naive_nm(scores, n, m))
    assert nm_violations(mask, pattern) == 0
    assert int(mask.sum()) == scores.numel() * n // m


def test_groups_run_along_dim0_for_transposed_weights():
    scores = torch.randn(8, 3)
    pattern = NMPattern(2, 4)
    mask = nm_keep_mask(scores, pattern, input_dim=0)
    assert torch.equal(mask, nm_keep_mask(scores.t().contiguous(), pattern).t())
    assert nm_violations(mask, pattern, input_dim=0) == 0
    assert nm_violations(mask, pattern, input_dim=1) if scores.shape[1] % 4 == 0 else True


def test_violations_are_counted():
    pattern = NMPattern(2, 4)
    mask = nm_keep_mask(torch.randn(4, 8), pattern)
    assert nm_violations(mask, pattern) == 0
    mask[0, 0] = ~mask[0, 0]
    mask[3, 7] = ~mask[3, 7]
    assert nm_violations(mask, pattern) == 2


def test_shape_check_names_the_bad_weights(tiny_bert):
    targets = find_targets(tiny_bert)
    check_pattern_shapes(targets, NMPattern(2, 4))  # hidden 16, ffn 32: all divisible by 4
    with pytest.raises(ValueError, match=r"divisible by 32.*bert\.encoder\.layer\.0\.attention\.self\.query\.weight"):
        check_pattern_shapes(targets, NMPattern(2, 32))


def test_conv1d_targets_group_along_dim0(tiny_gpt2):
    targets = {t.name: t for t in find_targets(tiny_gpt2)}
    assert targets["transformer.h.0.attn.c_attn.weight"].input_dim == 0
    assert targets["score.weight"].input_dim == 1


# ---- iterative chains onto a pattern: at least N of every M before the last round, exactly N at it ----------------

def naive_nm_within(scores: torch.Tensor, within: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Per group, a Python loop: among allowed positions keep the n largest, earlier index first among equals."""
    keep = torch.zeros_like(scores, dtype=torch.bool)
    for r in range(scores.shape[0]):
        for g in range(0, scores.shape[1], m):
            allowed = [j for j in range(m) if within[r, g + j]]
            for j in sorted(allowed, key=lambda j: (-float(scores[r, g + j]), j))[:n]:
                keep[r, g + j] = True
    return keep


def test_nm_within_a_mask_keeps_the_n_best_allowed_and_never_regrows():
    gen = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 3, (5, 16), generator=gen).float()
    within = nm_keep_mask(torch.rand(5, 16, generator=gen), NMPattern(3, 4))  # 3 of every 4 allowed
    mask = nm_keep_mask(scores, NMPattern(2, 4), within=within)
    assert torch.equal(mask, naive_nm_within(scores, within, 2, 4))
    assert not bool((mask & ~within).any()) and nm_violations(mask, NMPattern(2, 4)) == 0
    assert torch.equal(nm_keep_mask(scores.t().contiguous(), NMPattern(2, 4), 0, within.t().contiguous()), mask.t())


def test_nm_within_a_mask_refuses_groups_with_fewer_than_n_left():
    within = torch.ones(2, 8, dtype=torch.bool)
    within[1, 4:7] = False  # the second group of row 1 keeps 1 of 4
    with pytest.raises(ValueError, match=r"1 group\(s\) of 4 keep fewer than 2"):
        nm_keep_mask(torch.rand(2, 8), NMPattern(2, 4), within=within)


def _sources(scores: dict[str, torch.Tensor], within: dict[str, torch.Tensor] | None = None):
    from smc_trainer.engine.selection import tensor_scores

    return {n: tensor_scores(s, within=None if within is None else within[n]) for n, s in scores.items()}


def _floor_oracle(scores, within, pattern, keep):
    """Force the n best allowed of every group, then a stable descending sort of the other allowed scores (all
    layers together for an int budget, each layer alone for a mapping)."""
    forced = {n: naive_nm_within(s, within[n], pattern.n, pattern.m) for n, s in scores.items()}
    names = list(scores) if isinstance(keep, int) else None
    groups = [names] if names else [[n] for n in scores]
    out = {n: f.clone() for n, f in forced.items()}
    for group in groups:
        budget = keep if names else keep[group[0]]
        budget -= sum(int(forced[n].sum()) for n in group)
        cands = [(-float(scores[n].reshape(-1)[i]), gi, i, n) for gi, n in enumerate(group)
                 for i in range(scores[n].numel()) if within[n].reshape(-1)[i] and not forced[n].reshape(-1)[i]]
        for _, _, i, n in sorted(cands)[:budget]:
            out[n].view(-1)[i] = True
    return out


@pytest.mark.parametrize("per_layer", [False, True])
def test_floor_selection_keeps_the_budget_with_at_least_n_of_every_m(per_layer):
    from smc_trainer.engine.patterns import nm_floor_masks

    gen = torch.Generator().manual_seed(7)
    pattern = NMPattern(2, 4)
    scores = {"a": torch.randint(0, 5, (6, 8), generator=gen).float(), "b": torch.rand(4, 12, generator=gen) * 2}
    within = {n: torch.rand(s.shape, generator=gen) < 0.9 for n, s in scores.items()}
    for w in within.values():  # every group keeps at least 2, as an earlier round leaves it
        w |= nm_keep_mask(torch.rand(w.shape, generator=gen), pattern)
    layouts = {n: (s.shape, 1) for n, s in scores.items()}
    keep = {"a": 30, "b": 33} if per_layer else 63
    masks = nm_floor_masks(_sources(scores, within), layouts, pattern, keep)
    oracle = _floor_oracle(scores, within, pattern, keep)
    assert all(torch.equal(masks[n], oracle[n]) for n in scores)
    counts = {n: int(m.sum()) for n, m in masks.items()}
    assert counts == keep if per_layer else sum(counts.values()) == keep
    for n, mask in masks.items():
        assert not bool((mask & ~within[n]).any()), "a pruned weight came back"
        assert bool((mask.reshape(-1, 4).sum(dim=1) >= 2).all()), n
    with pytest.raises(ValueError, match="needs 48 kept weights"):  # 2 of every 4 of 96 weights
        nm_floor_masks(_sources(scores, within), layouts, pattern, 47)


@pytest.mark.parametrize("pattern,rate", [(NMPattern(2, 4), 0.2), (NMPattern(1, 4), 0.2), (NMPattern(4, 8), 0.3)])
def test_a_chain_of_rounds_lands_on_the_pattern_with_the_grid_counts(pattern, rate):
    """Every round of `imp_rounds` on magnitudes that change between rounds (training): exact grid counts, at
    least N of every M before the last round, exactly N at it, nested masks."""
    from smc_trainer.engine.patterns import nm_floor_masks
    from smc_trainer.engine.selection import keep_count
    from smc_trainer.methods.iterative import imp_rounds

    gen = torch.Generator().manual_seed(11)
    shapes = {"q": (8, 16), "ffn": (16, 8), "wide": (4, 32)}
    total = sum(a * b for a, b in shapes.values())
    layouts = {n: (torch.Size(s), 1) for n, s in shapes.items()}
    plan = imp_rounds(rate, pattern)
    assert plan[-1] == pattern.sparsity and all(s < pattern.sparsity for s in plan[:-1])
    masks = {n: torch.ones(s, dtype=torch.bool) for n, s in shapes.items()}
    for k, sparsity in enumerate(plan, start=1):
        weights = {n: torch.randn(s, generator=gen).abs() * (1 + i) for i, (n, s) in enumerate(shapes.items())}
        sources = _sources(weights, masks)
        if k < len(plan):
            new = nm_floor_masks(sources, layouts, pattern, keep_count(1 - sparsity, total))
            assert all(bool((m.reshape(-1, pattern.m).sum(1) >= pattern.n).all()) for m in new.values()), k
        else:
            new = {n: nm_keep_mask(weights[n], pattern, within=masks[n]) for n in shapes}
            assert all(nm_violations(m, pattern) == 0 for m in new.values())
        assert sum(int(m.sum()) for m in new.values()) == keep_count(1 - sparsity, total), f"round {k}"
        assert all(not bool((new[n] & ~masks[n]).any()) for n in shapes), f"round {k} regrew a weight"
        masks = new
