"""OWL layer-wise budgets: the paper's formula, monotone in the outlier ratio, exact total counts."""

from __future__ import annotations

import math

import pytest
import torch

from smc_trainer.engine.distributions import layer_counts, outlier_ratio, owl_densities
from smc_trainer.engine.selection import keep_count


def test_equal_layers_follow_the_papers_formula():
    ratios = {"a": 0.01, "b": 0.03, "c": 0.02, "d": 0.05}
    numels = dict.fromkeys(ratios, 1000)
    lam, density = 0.08, 0.5
    out = owl_densities(ratios, numels, density, lam)
    raw = {n: (r - 0.01) / 0.04 * 2 * lam for n, r in ratios.items()}
    mean = sum(raw.values()) / 4
    for n in ratios:  # OWL's code: ratio - mean(ratio) + (1 - sparsity)
        assert out[n] == pytest.approx(raw[n] - mean + density, abs=1e-12)
    assert out["a"] == pytest.approx(density - mean) and max(out.values()) - min(out.values()) == pytest.approx(2 * lam)


@pytest.mark.parametrize("density", [0.02, 0.1, 0.41, 0.5, 0.893, 0.97])
@pytest.mark.parametrize("lam", [0.0, 0.08, 0.3, 0.6])
def test_counts_sum_exactly_to_the_target_and_follow_outliers(density, lam):
    gen = torch.Generator().manual_seed(int(density * 1000) + int(lam * 100))
    shapes = {f"l{i}": (int(s), 32) for i, s in enumerate(torch.randint(1, 200, (9,), generator=gen))}
    ratios = {n: float(r) for n, r in zip(shapes, torch.rand(9, generator=gen))}
    counts = layer_counts("owl", shapes, density, outlier_ratios=ratios, owl_lambda=lam)
    total = sum(math.prod(s) for s in shapes.values())
    assert sum(counts.values()) == keep_count(density, total)
    dens = owl_densities(ratios, {n: math.prod(s) for n, s in shapes.items()}, density, lam)
    assert sum(dens[n] * math.prod(shapes[n]) for n in shapes) == pytest.approx(density * total, rel=1e-9)
    order = sorted(shapes, key=lambda n: ratios[n])
    assert all(dens[a] <= dens[b] + 1e-12 for a, b in zip(order, order[1:]))  # more outliers, more kept
    for n in shapes:
        assert 0 <= counts[n] <= math.prod(shapes[n])
        assert abs(counts[n] - dens[n] * math.prod(shapes[n])) < 1.0 + 1e-9


def test_owl_without_ratios_is_refused():
    with pytest.raises(ValueError, match="calibrat"):
        layer_counts("owl", {"a": (4, 4)}, 0.5)


def test_outlier_ratio_counts_scores_above_m_times_mean():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 33.0]])  # mean 5
    assert outlier_ratio(scores, 5.0) == (1, 8)
    assert outlier_ratio(scores, 7.0) == (0, 8)
