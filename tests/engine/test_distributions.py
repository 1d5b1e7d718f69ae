"""Per-layer density allocation: ERK densities and integer keep counts (DESIGN invariant 3)."""

from __future__ import annotations

import math

import pytest
import torch
from sparse_helpers import round_half_up

from smc_trainer.engine.distributions import allocate_counts, erk_densities, layer_counts, uniform_densities

# an embedding, square and wide linears, and a small classification head
BERTISH = {"embed": (1000, 32), "attn": (32, 32), "ffn": (128, 32), "head": (2, 32)}


def numels_of(shapes):
    return {n: math.prod(s) for n, s in shapes.items()}


def erk_raw(shape) -> float:
    return sum(shape) / math.prod(shape)


def random_shapes(gen: torch.Generator, max_layers: int = 8) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for i in range(int(torch.randint(1, max_layers + 1, (1,), generator=gen))):
        kind = int(torch.randint(0, 4, (1,), generator=gen))
        if kind == 0:  # tiny head
            shape = (int(torch.randint(1, 4, (1,), generator=gen)), int(torch.randint(4, 40, (1,), generator=gen)))
        elif kind == 1:  # embedding-like
            shape = (int(torch.randint(100, 600, (1,), generator=gen)), int(torch.randint(4, 24, (1,), generator=gen)))
        elif kind == 2:  # conv-like 4-D
            shape = tuple(int(x) for x in torch.randint(1, 6, (4,), generator=gen))
        else:
            shape = tuple(int(x) for x in torch.randint(1, 48, (2,), generator=gen))
        shapes[f"l{i}"] = shape
    return shapes


def check_erk(shapes, density, densities):
    numels = numels_of(shapes)
    total = sum(numels.values())
    assert list(densities) == list(shapes)
    capped = [n for n in shapes if densities[n] == 1.0]
    free = [n for n in shapes if n not in capped]
    for n in shapes:
        assert 0.0 <= densities[n] <= 1.0, (n, densities[n])
    # the kept total is the requested one
    kept = sum(densities[n] * numels[n] for n in shapes)
    assert kept == pytest.approx(density * total, rel=1e-6, abs=1e-9)
    if not free:
        return
    # every layer below 1 follows density_l = eps * (sum(shape) / prod(shape)) for one eps
    eps_values = [densities[n] / erk_raw(shapes[n]) for n in free]
    eps = eps_values[0]
    for n, e in zip(free, eps_values):
        assert e == pytest.approx(eps, rel=1e-9), (n, e, eps)
    # capped layers are exactly those that the same eps would push past 1
    for n in capped:
        assert eps * erk_raw(shapes[n]) >= 1.0 - 1e-9, f"{n} was made dense but eps gives {eps * erk_raw(shapes[n])}"
    for n in free:
        assert eps * erk_raw(shapes[n]) <= 1.0 + 1e-9


@pytest.mark.parametrize("density", [0.001, 0.01, 0.05, 0.1, 0.2, 0.36, 0.5, 0.8, 0.9, 0.99])
def test_erk_bertish_shapes(density):
    check_erk(BERTISH, density, erk_densities(BERTISH, density))


def test_erk_small_head_becomes_dense_at_high_density_only():
    low = erk_densities(BERTISH, 0.01)
    assert low["head"] < 1.0
    # ERK gives small layers more density: the ordering follows sum/prod
    assert low["head"] > low["attn"] > low["ffn"] > low["embed"]
    high = erk_densities(BERTISH, 0.5)
    assert high["head"] == 1.0
    assert high["attn"] < 1.0 and high["embed"] < 1.0
    very_high = erk_densities(BERTISH, 0.9)
    assert very_high["head"] == 1.0 and very_high["attn"] == 1.0  # capping cascades
    check_erk(BERTISH, 0.9, very_high)


def test_erk_random_shapes():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        shapes = random_shapes(gen)
        density = float(torch.rand(1, generator=gen))
        check_erk(shapes, density, erk_densities(shapes, density))


def test_erk_density_one_is_all_dense_and_zero_is_all_empty():
    assert all(d == pytest.approx(1.0) for d in erk_densities(BERTISH, 1.0).values())
    assert all(d == 0.0 for d in erk_densities(BERTISH, 0.0).values())


def test_erk_power_zero_is_uniform():
    for density in (0.1, 0.5, 0.9):
        erk = erk_densities(BERTISH, density, power=0.0)
        assert erk == pytest.approx(uniform_densities(BERTISH, density))


def test_uniform_densities():
    assert uniform_densities(BERTISH, 0.3) == {n: 0.3 for n in BERTISH}


def check_counts(counts, densities, numels, density, capacity=None, floor_or_ceil=True):
    assert list(counts) == list(densities)
    assert all(isinstance(c, int) for c in counts.values())
    target = round_half_up(density * sum(numels.values()))
    assert sum(counts.values()) == target
    for n, c in counts.items():
        assert 0 <= c <= numels[n], (n, c)
        if capacity is not None:
            assert c <= capacity[n], (n, c, capacity[n])
        if floor_or_ceil:
            exact = min(1.0, densities[n]) * numels[n]
            assert math.floor(exact - 1e-9) <= c <= math.ceil(exact + 1e-9), (n, c, exact)


def check_largest_remainder(counts, densities, numels):
    """A layer rounded up never has a smaller remainder than one rounded down."""
    up, down = [], []
    for n, c in counts.items():
        exact = min(1.0, densities[n]) * numels[n]
        frac = exact - math.floor(exact)
        if frac < 1e-9 or frac > 1 - 1e-9:
            continue
        (up if c == math.ceil(exact) else down).append(frac)
    if up and down:
        assert min(up) >= max(down) - 1e-9, (up, down)


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
def test_layer_counts_sum_exactly_and_round_each_layer(distribution):
    gen = torch.Generator().manual_seed(1)
    cases = [(BERTISH, d) for d in (0.0, 0.01, 0.2, 0.5, 0.8, 0.99, 1.0)]
    for _ in range(250):
        cases.append((random_shapes(gen), float(torch.rand(1, generator=gen))))
    for shapes, density in cases:
        numels = numels_of(shapes)
        densities = (uniform_densities if distribution == "uniform" else erk_densities)(shapes, density)
        counts = layer_counts(distribution, shapes, density)
        check_counts(counts, densities, numels, density)
        check_largest_remainder(counts, densities, numels)
        assert counts == allocate_counts(densities, numels, density)


def test_uniform_counts_for_equal_layers_differ_by_at_most_one():
    shapes = {f"l{i}": (7, 3) for i in range(5)}
    for k in range(0, 5 * 21 + 1):
        density = k / 105
        counts = layer_counts("uniform", shapes, density)
        assert sum(counts.values()) == k
        assert max(counts.values()) - min(counts.values()) <= 1
        # the remainder goes to the earlier layers (deterministic tie-break)
        assert list(counts.values()) == sorted(counts.values(), reverse=True)


def test_allocate_counts_with_capacity():
    gen = torch.Generator().manual_seed(2)
    checked = 0
    for _ in range(300):
        shapes = random_shapes(gen)
        numels = numels_of(shapes)
        total = sum(numels.values())
        capacity = {n: int(torch.randint(0, numels[n] + 1, (1,), generator=gen)) for n in shapes}
        if sum(capacity.values()) == 0:
            continue
        # a density whose target fits into the capacity
        density = float(torch.rand(1, generator=gen)) * sum(capacity.values()) / total
        if round_half_up(density * total) > sum(capacity.values()):
            continue
        for distribution in ("uniform", "erk"):
            densities = (uniform_densities if distribution == "uniform" else erk_densities)(shapes, density)
            counts = layer_counts(distribution, shapes, density, capacity=capacity)
            check_counts(counts, densities, numels, density, capacity=capacity, floor_or_ceil=False)
            assert counts == allocate_counts(densities, numels, density, capacity)
            checked += 1
    assert checked > 200


def test_capacity_spills_to_other_layers():
    numels = {"a": 100, "b": 100}
    densities = {"a": 0.5, "b": 0.5}
    counts = allocate_counts(densities, numels, 0.5, capacity={"a": 10, "b": 100})
    assert counts == {"a": 10, "b": 90}


def test_capacity_too_small_raises():
    with pytest.raises(ValueError):
        allocate_counts({"a": 0.5, "b": 0.5}, {"a": 100, "b": 100}, 0.5, capacity={"a": 10, "b": 20})


def test_global_distribution_has_no_layer_counts():
    assert layer_counts("global", BERTISH, 0.5) is None
    assert layer_counts("global", BERTISH, 0.5, capacity={n: 1 for n in BERTISH}) is None


@pytest.mark.parametrize("bad", ["erk2", "ERK", "OWL", ""])
def test_unknown_distribution_raises_listing_choices(bad):
    with pytest.raises(ValueError) as err:
        layer_counts(bad, BERTISH, 0.5)
    msg = str(err.value)
    for choice in ("global", "uniform", "erk", "owl"):
        assert choice in msg
    assert repr(bad) in msg or bad in msg
