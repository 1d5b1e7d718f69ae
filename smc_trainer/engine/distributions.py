"""Per-layer density allocation: how a target sparsity is spread over the prunable tensors.

`global` has no per-layer budget (one threshold decides); `uniform`, `erk` and `owl` give each layer a
density, then `allocate_counts` turns densities into integer keep counts whose sum is exactly
the global budget `round(density * N)` (each layer gets the floor or ceiling of its share).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from torch import Tensor

from smc_trainer.engine.selection import keep_count
from smc_trainer.errors import UsageError

DISTRIBUTIONS = ("global", "uniform", "erk", "owl")


def uniform_densities(shapes: Mapping[str, Sequence[int]], density: float) -> dict[str, float]:
    """Every layer at the same density."""
    return {name: density for name in shapes}


def erk_densities(shapes: Mapping[str, Sequence[int]], density: float, power: float = 1.0) -> dict[str, float]:
    """Erdos-Renyi-Kernel (Evci et al. 2020): density_l = eps * (sum(shape) / prod(shape)) ** power.

    `eps` is solved so the kept total matches `density`; layers whose density would exceed 1 are
    made dense and `eps` is solved again over the rest.
    """
    numels = {name: math.prod(shape) for name, shape in shapes.items()}
    raw = {name: (sum(shape) / numels[name]) ** power for name, shape in shapes.items()}
    dense: set[str] = set()
    while True:
        budget = density * sum(numels.values()) - sum(numels[n] for n in dense)
        divisor = sum(raw[n] * numels[n] for n in shapes if n not in dense)
        if divisor == 0:
            break
        eps = budget / divisor
        over = [n for n in shapes if n not in dense and eps * raw[n] > 1.0]
        if not over:
            break
        top = max(raw[n] for n in over)
        dense.update(n for n in over if raw[n] == top)
    return {n: 1.0 if n in dense else max(0.0, eps * raw[n]) for n in shapes}


def outlier_ratio(scores: Tensor, threshold: float) -> tuple[int, int]:
    """OWL's outliers of one layer: (how many scores exceed `threshold` x their mean, how many scores)."""
    flat = scores.detach().reshape(-1).float()
    return int((flat > threshold * flat.mean()).sum()), flat.numel()


def owl_densities(
    ratios: Mapping[str, float], numels: Mapping[str, int], density: float, lam: float
) -> dict[str, float]:
    """Outlier-weighted layer-wise densities (OWL, Yin et al. 2023): layers with more activation outliers keep more.

    Ratios are scaled linearly onto [0, 2 lam] (min -> 0, max -> 2 lam), then shifted by one constant so the
    densities, clipped to [0, 1], average exactly `density` weighted by layer size (the paper's layers are all
    one size, so its plain mean is this average). Without clipping every layer lies within `density` +- 2 lam.
    """
    if lam < 0:
        raise UsageError(f"--owl_lambda must be >= 0; got {lam}")
    lo, hi = min(ratios.values()), max(ratios.values())
    spread = {n: 0.0 if hi == lo else (r - lo) / (hi - lo) * 2.0 * lam for n, r in ratios.items()}
    total = sum(numels[n] for n in ratios)

    def kept(shift: float) -> float:
        return sum(min(1.0, max(0.0, spread[n] + shift)) * numels[n] for n in ratios) / total

    low, high = -2.0 * lam - 1.0, 1.0  # kept(low) = 0 <= density <= 1 = kept(high); kept is monotone
    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if kept(mid) < density else (low, mid)
    return {n: min(1.0, max(0.0, spread[n] + high)) for n in ratios}


def allocate_counts(
    densities: Mapping[str, float],
    numels: Mapping[str, int],
    density: float,
    capacity: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Integer keep counts: floor(d_l * N_l) plus largest remainders, summing to round(density * N).

    `capacity` caps a layer's count (e.g. the weights a mask still allows during gradual pruning);
    whatever a capped layer cannot take goes to the layers with the largest remainders.
    """
    cap = {n: numels[n] if capacity is None else min(numels[n], capacity[n]) for n in densities}
    exact = {n: min(1.0, max(0.0, densities[n])) * numels[n] for n in densities}
    counts = {n: min(cap[n], math.floor(v)) for n, v in exact.items()}
    target = keep_count(density, sum(numels.values()))
    missing = target - sum(counts.values())
    position = {n: i for i, n in enumerate(densities)}
    order = sorted(densities, key=lambda n: (-(exact[n] - counts[n]), position[n]))
    step = 1 if missing > 0 else -1
    while missing != 0:
        moved = False
        for n in order if step > 0 else reversed(order):
            if missing == 0:
                break
            if 0 <= counts[n] + step <= cap[n]:
                counts[n] += step
                missing -= step
                moved = True
        if not moved:
            raise UsageError(f"cannot place {target} kept weights in layers that allow {sum(cap.values())}")
    return counts


def layer_counts(
    distribution: str,
    shapes: Mapping[str, Sequence[int]],
    density: float,
    capacity: Mapping[str, int] | None = None,
    *,
    outlier_ratios: Mapping[str, float] | None = None,
    owl_lambda: float = 0.08,
) -> dict[str, int] | None:
    """Keep counts per layer for `distribution`, or None for `global` (one threshold over all layers).

    `owl` needs each layer's `outlier_ratios` (from calibration: `outlier_ratio` of its Wanda scores)."""
    if distribution == "global":
        return None
    numels = {name: math.prod(shape) for name, shape in shapes.items()}
    if distribution == "uniform":
        return allocate_counts(uniform_densities(shapes, density), numels, density, capacity)
    if distribution == "erk":
        return allocate_counts(erk_densities(shapes, density), numels, density, capacity)
    if distribution == "owl":
        if outlier_ratios is None:
            raise UsageError("--distribution owl needs activation outlier ratios from calibration data; use it with a "
                             "calibrated criterion (--criterion wanda or sparsegpt)")
        return allocate_counts(owl_densities(outlier_ratios, numels, density, owl_lambda), numels, density, capacity)
    raise UsageError(f"--distribution must be one of {', '.join(DISTRIBUTIONS)}; got {distribution!r}")
