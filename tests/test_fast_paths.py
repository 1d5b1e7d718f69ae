"""The fast paths give exactly what the simple definitions give.

* Top-k selection: `select_topk` over copy-free magnitude scores, with tiny `chunk_size` and
  `sample_size` so the multi-chunk and bracket-retry paths run, equals `reference_keep_masks` and an
  independent brute force (numpy lexsort on (-score, global position)) bit for bit, on inputs full of
  ties (integer-valued weights, repeated values, zeros, -0.0), globally and per layer, with and
  without `within` masks.
* Mask enforcement: `MaskSet.apply_to_weights` / `apply_to_grads` (grouped `torch._foreach_mul_`) equal a
  plain per-parameter `p.mul_(mask)` loop bit for bit.

No timing assertions.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from smc_trainer import MaskSet, find_targets
from smc_trainer import selection as sel
from smc_trainer.selection import (
    keep_count,
    layer_keep_masks,
    magnitude_scores,
    reference_keep_masks,
    select_topk,
)

SHAPES = [(5, 7), (1, 1), (13,), (3, 4, 2), (40, 3), (2, 2)]


def tie_heavy_weights(seed: int, kind: str) -> dict[str, torch.Tensor]:
    """Float32 weights with many exact ties in |w| (ints, a handful of repeated values, zeros, -0.0)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i, shape in enumerate(SHAPES):
        n = int(np.prod(shape))
        if kind == "ints":
            w = torch.randint(-4, 5, (n,), generator=gen).float()
        elif kind == "repeated":
            values = torch.tensor([0.0, -0.0, 0.5, -0.5, 1.25, 3.0, -3.0])
            w = values[torch.randint(0, len(values), (n,), generator=gen)]
        elif kind == "zeros":
            w = torch.zeros(n)
            if i % 2:
                w[torch.randint(0, n, (max(1, n // 4),), generator=gen)] = 2.0
        else:  # "mixed": continuous values with some duplicated and some zeroed
            w = torch.randn(n, generator=gen)
            w[torch.randint(0, n, (n // 3 + 1,), generator=gen)] = 0.0
            w[torch.randint(0, n, (n // 3 + 1,), generator=gen)] = 0.75
        out[f"layer{i}.weight"] = w.reshape(shape)
    return out


def brute_force(weights: dict[str, torch.Tensor], k: int, within: dict[str, torch.Tensor] | None = None):
    """Keep the k largest |w| among allowed positions; ties go to the earlier layer, then the lower flat index."""
    vals, pos, sizes = [], [], []
    offset = 0
    for name, w in weights.items():
        a = w.detach().abs().reshape(-1).double().numpy()
        idx = np.arange(a.size) + offset
        if within is not None:
            keep = within[name].reshape(-1).numpy()
            a, idx = a[keep], idx[keep]
        vals.append(a)
        pos.append(idx)
        sizes.append(w.numel())
        offset += w.numel()
    v, p = np.concatenate(vals), np.concatenate(pos)
    order = np.lexsort((p, -v))[:k]  # primary key -|w| (descending |w|), secondary key position
    kept = np.zeros(offset, dtype=bool)
    kept[p[order]] = True
    out, offset = {}, 0
    for name, size in zip(weights, sizes):
        out[name] = torch.from_numpy(kept[offset : offset + size].copy())
        offset += size
    return out


def random_within(weights: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + 1000)
    return {n: torch.rand(w.shape, generator=gen) < 0.6 for n, w in weights.items()}


def assert_same(got: dict[str, torch.Tensor], *expected: dict[str, torch.Tensor]) -> None:
    for exp in expected:
        assert got.keys() == exp.keys()
        for name in got:
            g, e = got[name].reshape(-1), exp[name].reshape(-1)
            assert g.dtype == torch.bool and e.dtype == torch.bool
            assert torch.equal(g, e), f"{name}: differs at {torch.nonzero(g ^ e).squeeze(1).tolist()[:8]}"


@pytest.fixture
def bracket_calls(monkeypatch):
    """Count `_threshold_in_bracket` calls per `select_topk` (more than one means the bracket was widened)."""
    calls: list[int] = []
    original = sel._threshold_in_bracket

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(sel, "_threshold_in_bracket", counting)
    return calls


@pytest.mark.parametrize("kind", ["ints", "repeated", "zeros", "mixed"])
@pytest.mark.parametrize("use_within", [False, True])
def test_global_selection_matches_reference_and_brute_force(kind, use_within):
    for seed in range(3):
        weights = tie_heavy_weights(seed, kind)
        within = random_within(weights, seed) if use_within else None
        available = sum(int(m.sum()) for m in within.values()) if within else sum(w.numel() for w in weights.values())
        ks = sorted({0, 1, 2, available // 3, available // 2, available - 1, available,
                     *(keep_count(d, available) for d in (0.1, 0.37, 0.8))})
        for k in ks:
            for chunk_size, sample_size in ((3, 2), (5, 7), (16, 64), (sel.CHUNK_SIZE, sel.SAMPLE_SIZE)):
                sources = {n: magnitude_scores(w, None if within is None else within[n]) for n, w in weights.items()}
                got = select_topk(sources, k, chunk_size=chunk_size, sample_size=sample_size)
                ref_sources = {n: magnitude_scores(w, None if within is None else within[n])
                               for n, w in weights.items()}
                assert sum(int(m.sum()) for m in got.values()) == k
                assert_same(got, reference_keep_masks(ref_sources, k), brute_force(weights, k, within))


@pytest.mark.parametrize("sample", ["too_low", "too_high", "blocks"])
def test_misleading_samples_force_bracket_retry(bracket_calls, sample):
    """A sample that misplaces the bracket (or the contiguous-block sampler) still gives the exact masks."""
    weights = tie_heavy_weights(7, "mixed")
    total = sum(w.numel() for w in weights.values())
    misleading = {
        "too_low": lambda idx: torch.zeros(idx.numel()),  # bracket at 0: the threshold lies above it
        "too_high": lambda idx: torch.full((idx.numel(),), 1e6),  # bracket far above every score
        "blocks": None,  # no random access: sample contiguous blocks through `values`
    }[sample]
    retried = 0
    for k in range(1, total, 3):
        for chunk_size, sample_size in ((1, 50), (4, 200), (64, 1000)):
            bracket_calls.clear()
            sources = {n: dataclasses.replace(magnitude_scores(w), at=misleading) for n, w in weights.items()}
            got = select_topk(sources, k, chunk_size=chunk_size, sample_size=sample_size)
            retried += len(bracket_calls) > 1
            assert_same(got, brute_force(weights, k))
    if sample != "blocks":
        assert retried > 0, "the bracket-retry path was never taken"


@pytest.mark.parametrize("kind", ["ints", "repeated", "zeros", "mixed"])
def test_per_layer_selection_matches_brute_force(kind):
    for seed in range(3):
        weights = tie_heavy_weights(seed, kind)
        within = random_within(weights, seed)
        for density in (0.0, 0.2, 0.5, 0.77, 1.0):
            expected = {n: brute_force({n: w}, keep_count(density, w.numel()))[n].view(w.shape)
                        for n, w in weights.items()}
            got = layer_keep_masks({n: w.abs() for n, w in weights.items()}, density)
            assert_same(got, expected)
            for name, w in weights.items():  # the per-layer path methods use, with within masks and tiny chunks
                k = keep_count(density, int(within[name].sum()))
                for chunk_size, sample_size in ((2, 3), (9, 1)):
                    one = select_topk({name: magnitude_scores(w, within[name])}, k,
                                      chunk_size=chunk_size, sample_size=sample_size)
                    ref = reference_keep_masks({name: magnitude_scores(w, within[name])}, k)
                    assert_same(one, ref, brute_force({name: w}, k, {name: within[name]}))


# ---------------------------------------------------------------------------------------------
# MaskSet: grouped foreach multiply == a plain loop
# ---------------------------------------------------------------------------------------------


def tiny_model(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Embedding(11, 6),
        torch.nn.Linear(6, 9),
        torch.nn.ReLU(),
        torch.nn.Linear(9, 4),
        torch.nn.Linear(4, 3, bias=False),
    )
    return model.to(dtype)


def bits(t: torch.Tensor) -> torch.Tensor:
    """Raw bit pattern, so -0.0 vs 0.0 and NaN payloads count as differences."""
    return t.detach().contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_maskset_foreach_equals_plain_loop(dtype):
    model = tiny_model(dtype)
    targets = find_targets(model)
    masks = MaskSet(targets)
    gen = torch.Generator().manual_seed(3)
    new = {t.name: torch.rand(t.param.shape, generator=gen) < 0.5 for t in targets}
    masks.set_masks(new)  # installs and applies once; now give weights and grads fresh values
    with torch.no_grad():
        for i, t in enumerate(targets):
            t.param.copy_(torch.randn(t.param.shape, generator=gen).to(dtype))
            t.param.view(-1)[0] = -1.5  # a negative value at a (maybe) pruned spot gives -0.0
            if i == 1:
                t.param.grad = None  # a weight without gradient is skipped
            else:
                t.param.grad = torch.randn(t.param.shape, generator=gen).to(dtype)
                t.param.grad.view(-1)[-1] = float("inf")  # inf * 0 -> nan both ways
    expected_w = {t.name: t.param.detach().clone() for t in targets}
    expected_g = {t.name: None if t.param.grad is None else t.param.grad.clone() for t in targets}
    for t in targets:  # the plain loop
        expected_w[t.name].mul_(new[t.name])
        if expected_g[t.name] is not None:
            expected_g[t.name].mul_(new[t.name])

    masks.apply_to_grads()
    masks.apply_to_weights()
    for t in targets:
        assert torch.equal(bits(t.param), bits(expected_w[t.name])), t.name
        if expected_g[t.name] is None:
            assert t.param.grad is None
        else:
            assert torch.equal(bits(t.param.grad), bits(expected_g[t.name])), t.name
