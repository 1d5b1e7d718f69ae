"""Wanda and SparseGPT as pure functions, against naive oracles (explicit per-row sort; an OBS loop with an
explicit inverse Hessian, one column at a time)."""

from __future__ import annotations

import pytest
import torch

from smc_trainer.engine.oneshot.sparsegpt import block_prune_counts, reconstruction_error, sparsegpt_prune
from smc_trainer.engine.oneshot.wanda import row_counts, row_keep_masks, wanda_scores
from smc_trainer.engine.patterns import NMPattern, nm_violations


def test_wanda_scores_are_weight_times_input_norm():
    w = torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, 0.0]])
    norm = torch.tensor([2.0, 1.0, 0.5])
    assert torch.equal(wanda_scores(w, norm), torch.tensor([[2.0, 2.0, 1.5], [8.0, 5.0, 0.0]]))


@pytest.mark.parametrize("keep", [0, 1, 7, 12, 13, 24])
def test_row_keep_masks_equal_a_per_row_sort(keep):
    scores = torch.randint(0, 3, (4, 6), generator=torch.Generator().manual_seed(keep)).float()
    mask = row_keep_masks(scores, keep)
    assert int(mask.sum()) == keep
    counts = row_counts(4, 6, keep)
    for r in range(4):
        vals = scores[r].tolist()
        kept = sorted(range(6), key=lambda j: (-vals[j], j))[: int(counts[r])]
        assert mask[r].nonzero().flatten().tolist() == sorted(kept)


def test_block_counts_sum_exactly():
    for pruned, cols, bs in [(10, 7, 3), (0, 8, 4), (96, 16, 5), (33, 130, 128)]:
        starts = list(range(0, cols, bs))
        counts = block_prune_counts(pruned, 4, cols, starts)
        assert sum(counts) == pruned and all(c >= 0 for c in counts)


def _lowest_reference(scores: torch.Tensor, count: int) -> torch.Tensor:
    flat = scores.reshape(-1).tolist()
    order = sorted(range(len(flat)), key=lambda j: (-flat[j], j))  # kept first: highest, earlier among equals
    out = torch.zeros(len(flat), dtype=torch.bool)
    out[order[len(flat) - count:]] = True
    return out.view(scores.shape)


def reference_obs(weight, hessian, keep=None, pattern=None, blocksize=4, dampening=0.01):
    """SparseGPT's math written the slow way: explicit inverse of the Hessian of the columns still free."""
    w = weight.double().clone()
    h = hessian.double().clone()
    dead = h.diagonal() == 0
    h.diagonal()[dead] = 1.0
    h.diagonal().add_(dampening * float(h.diagonal().mean()))
    rows, cols = w.shape
    pruned = torch.zeros(rows, cols, dtype=torch.bool)
    starts = list(range(0, cols, blocksize))
    counts = block_prune_counts(rows * cols - keep, rows, cols, starts) if keep is not None else None

    def saliency(j0, j1):
        d = torch.tensor([float(torch.linalg.inv(h[j:, j:])[0, 0]) for j in range(j0, j1)], dtype=torch.float64)
        return w[:, j0:j1] ** 2 / d.unsqueeze(0)

    for i in range(cols):
        if counts is not None and i % blocksize == 0:
            b = i // blocksize
            end = min(i + blocksize, cols)
            pruned[:, i:end] = _lowest_reference(saliency(i, end), counts[b])
        if pattern is not None and i % pattern.m == 0:
            sal = saliency(i, i + pattern.m)
            for r in range(rows):
                vals = sal[r].tolist()
                kept = sorted(range(pattern.m), key=lambda j: (-vals[j], j))[: pattern.n]
                pruned[r, i:i + pattern.m] = torch.tensor([j not in kept for j in range(pattern.m)])
        inv = torch.linalg.inv(h[i:, i:])
        for r in range(rows):
            if pruned[r, i]:
                w[r, i:] -= w[r, i] / inv[0, 0] * inv[0, :]
        w[pruned[:, i], i] = 0.0
    return w, ~pruned


def _layer(rows=5, cols=12, tokens=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(cols, tokens, generator=gen, dtype=torch.float64)
    x[3] = 0.7 * x[2] + 0.1 * x[3]  # correlated inputs: the weight update matters
    x[7] = 0.0  # an input never active (dead column)
    w = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    return w, x, x @ x.t()


@pytest.mark.parametrize("blocksize", [4, 5, 12, 128])
@pytest.mark.parametrize("keep", [30, 17, 59])
def test_sparsegpt_equals_explicit_inverse_obs(blocksize, keep):
    w, _, h = _layer()
    new, mask = sparsegpt_prune(w, h, keep=keep, blocksize=blocksize)
    ref_w, ref_mask = reference_obs(w, h, keep=keep, blocksize=blocksize)
    assert torch.equal(mask, ref_mask)
    assert int(mask.sum()) == keep
    assert torch.allclose(new, ref_w, atol=1e-9, rtol=1e-9)
    assert bool((new[~mask] == 0).all())


def test_sparsegpt_nm_equals_explicit_inverse_obs():
    w, _, h = _layer(cols=16)
    pattern = NMPattern(2, 4)
    new, mask = sparsegpt_prune(w, h, pattern=pattern, blocksize=8)
    ref_w, ref_mask = reference_obs(w, h, pattern=pattern, blocksize=8)
    assert torch.equal(mask, ref_mask)
    assert nm_violations(mask, pattern) == 0
    assert torch.allclose(new, ref_w, atol=1e-9, rtol=1e-9)


def test_sparsegpt_reconstructs_better_than_masking_alone():
    w, x, h = _layer(rows=16, cols=32, tokens=200, seed=3)
    new, mask = sparsegpt_prune(w, h, keep=w.numel() // 2, blocksize=8)
    err = reconstruction_error(w, new, h)
    assert err == pytest.approx(float(((w @ x - new @ x) ** 2).sum()), rel=1e-9)
    masked_only = reconstruction_error(w, w * mask, h)
    magnitude = w * (w.abs() >= w.abs().flatten().kthvalue(w.numel() // 2 + 1).values)
    assert err < masked_only
    assert err < reconstruction_error(w, magnitude, h)


def test_sparsegpt_keeps_everything_at_full_density():
    w, _, h = _layer()
    new, mask = sparsegpt_prune(w, h, keep=w.numel())
    assert bool(mask.all()) and torch.equal(new, w)


def test_sparsegpt_refuses_bad_inputs():
    w, _, h = _layer()
    with pytest.raises(ValueError, match="Hessian"):
        sparsegpt_prune(w, h[:5, :5], keep=10)
    with pytest.raises(ValueError, match="exactly one"):
        sparsegpt_prune(w, h)
    with pytest.raises(ValueError, match="divisible"):
        sparsegpt_prune(w, h, pattern=NMPattern(2, 5))
