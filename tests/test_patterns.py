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
