"""The fast paths give exactly what the simple definitions give.

* Top-k selection: `select_topk` over copy-free magnitude scores, with tiny `chunk_size` and
  `sample_size` so the multi-chunk and bracket-retry paths run, equals `reference_keep_masks` and an
  independent brute force (numpy lexsort on (-score, global position)) bit for bit, on inputs full of
  ties (integer-valued weights, repeated values, zeros, -0.0), globally and per layer, with and
  without `within` masks.
* The same on raw signed scores with +-inf, -0.0 and `within` masks (excluded positions never tie with a
  kept -inf), with every chunk and sample size down to 1; on tie-heavy inputs that take each path of the
  counted-endpoint machinery (point brackets, ties added at a counted lo, ties dropped at a counted hi);
  on a medium input that takes the word-scan gather and a growing gather buffer; and on float32 scores
  ranked together with float64 ones (thresholds compared through their float32 neighbours).
* NaN anywhere in a selectable position raises naming the tensor; NaN outside `within` is ignored.
* `LayerScores.into` (the buffer path of the passes) equals `values` bit for bit for every score kind.
* `random_scores` equals an independent evaluation of its definition (Philox4x64 stream, top 24 bits),
  any slice equals the full tensor's slice, and another process draws the same numbers.
* Mask enforcement: `MaskSet.apply_to_weights` / `apply_to_grads` (grouped `torch._foreach_mul_`) equal a
  plain per-parameter `p.mul_(mask)` loop bit for bit.

No timing assertions.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

from smc_trainer import MaskSet, find_targets
from smc_trainer.engine import selection as sel
from smc_trainer.engine import selection_passes as sp
from smc_trainer.engine.selection import (
    LayerScores,
    keep_count,
    layer_keep_masks,
    magnitude_scores,
    product_scores,
    random_scores,
    reference_keep_masks,
    select_topk,
    tensor_scores,
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


def brute_force(weights: dict[str, torch.Tensor], k: int, within: dict[str, torch.Tensor] | None = None,
                magnitude: bool = True):
    """Keep the k largest |w| (or w) among allowed positions; ties go to the earlier layer, then the lower flat
    index. Compared in float64, which holds every float32 and float64 value exactly."""
    vals, pos, sizes = [], [], []
    offset = 0
    for name, w in weights.items():
        a = (w.detach().abs() if magnitude else w.detach()).reshape(-1).double().numpy()
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
# Raw signed scores: +-inf, -0.0, within masks, every chunk and sample size down to 1
# ---------------------------------------------------------------------------------------------

SIGNED_VALUES = torch.tensor([float("inf"), float("-inf"), 0.0, -0.0, 1.0, -1.0, 2.5, -2.5])
CHUNK_SAMPLE = [(1, 1), (1, 5), (2, 1), (3, 2), (7, 3), (8, 1), (16, 64), (sel.CHUNK_SIZE, sel.SAMPLE_SIZE)]


def signed_scores(seed: int) -> dict[str, torch.Tensor]:
    """Raw float32 scores drawn from a few values including +-inf and +-0.0 (massive ties everywhere)."""
    gen = torch.Generator().manual_seed(seed)
    return {f"s{i}": SIGNED_VALUES[torch.randint(0, len(SIGNED_VALUES), (n,), generator=gen)]
            for i, n in enumerate((9, 1, 17, 24))}


@pytest.mark.parametrize("use_within", [False, True])
def test_signed_scores_with_infinities_match_reference(use_within):
    for seed in range(4):
        scores = signed_scores(seed)
        within = random_within(scores, seed) if use_within else None
        available = sum(int(m.sum()) for m in within.values()) if within else sum(t.numel() for t in scores.values())
        for k in range(available + 1):
            expected = brute_force(scores, k, within, magnitude=False)
            for chunk_size, sample_size in CHUNK_SAMPLE:
                sources = {n: tensor_scores(t, within=None if within is None else within[n]) for n, t in scores.items()}
                got = select_topk(sources, k, chunk_size=chunk_size, sample_size=sample_size)
                assert_same(got, expected)
                if k in (1, available // 2):
                    assert_same(got, reference_keep_masks(sources, k))
            for name, t in scores.items():  # per layer
                w = None if within is None else within[name]
                k_layer = keep_count(k / max(1, available), t.numel() if w is None else int(w.sum()))
                one = select_topk({name: tensor_scores(t, within=w)}, k_layer, chunk_size=3, sample_size=2)
                assert_same(one, brute_force({name: t}, k_layer, None if w is None else {name: w}, magnitude=False))


def test_excluded_positions_never_tie_with_kept_minus_infinity():
    """Outside `within` scores are ranked below everything, even below a selectable -inf."""
    scores = {"a": torch.tensor([5.0, float("-inf"), float("-inf"), 7.0]), "b": torch.tensor([float("-inf")] * 5)}
    within = {"a": torch.tensor([False, True, False, False]), "b": torch.tensor([False, True, True, False, True])}
    for k in range(5):
        for chunk_size, sample_size in CHUNK_SAMPLE:
            sources = {n: tensor_scores(t, within=within[n]) for n, t in scores.items()}
            got = select_topk(sources, k, chunk_size=chunk_size, sample_size=sample_size)
            assert_same(got, brute_force(scores, k, within, magnitude=False))
            assert not any(bool((got[n] & ~within[n]).any()) for n in scores)


# ---------------------------------------------------------------------------------------------
# Counted endpoints (heavy ties): every path of the tie machinery, forced and checked
# ---------------------------------------------------------------------------------------------


def heavy_tie_weights(seed: int, n: int = 1500) -> dict[str, torch.Tensor]:
    """40% of |w| exactly 1.0, 25% exactly 0.0, 10% exactly 3.0, the rest continuous: samples see heavy ties."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i, size in enumerate((n, n // 3, 7)):
        w = torch.randn(size, generator=gen)
        pick = torch.rand(size, generator=gen)
        w[pick < 0.4] = 1.0
        w[(pick >= 0.4) & (pick < 0.65)] = -0.0
        w[(pick >= 0.65) & (pick < 0.75)] = -3.0
        out[f"w{i}"] = w
    return out


def threshold_kind(th: sp.Threshold) -> str:
    if th.counted_ties is None:
        return "gathered"
    if th.gathered is None:
        return "point"
    return "counted_hi" if th.ties_in_masks else "counted_lo"


@pytest.mark.parametrize("use_within", [False, True])
def test_counted_endpoint_paths_match_brute_force(monkeypatch, use_within):
    kinds: list[str] = []
    original = sel._threshold_in_bracket

    def recording(*args, **kwargs):
        th = original(*args, **kwargs)
        if th is not None:
            kinds.append(threshold_kind(th))
        return th

    monkeypatch.setattr(sel, "_threshold_in_bracket", recording)
    for seed in range(2):
        weights = heavy_tie_weights(seed)
        within = random_within(weights, seed) if use_within else None
        available = sum(int(m.sum()) for m in within.values()) if within else sum(w.numel() for w in weights.values())
        for k in range(1 + seed, available, 23):
            for chunk_size, sample_size in ((50, 1024), (1 << 12, 1 << 12), (7, 300)):
                sources = {n: magnitude_scores(w, None if within is None else within[n]) for n, w in weights.items()}
                got = select_topk(sources, k, chunk_size=chunk_size, sample_size=sample_size)
                assert_same(got, brute_force(weights, k, within))
    for kind in ("gathered", "point", "counted_hi", "counted_lo"):
        assert kind in kinds, f"path {kind!r} never taken: {sorted(set(kinds))}"


def test_word_scan_gather_and_growing_buffer_match_reference(monkeypatch):
    """A medium input: sparse in-bracket flags take the int64 word scan; a gather buffer of capacity 1 must grow."""
    gen = torch.Generator().manual_seed(11)
    weights = {"a": torch.randn(1 << 17, generator=gen), "b": torch.randint(-50, 50, (3 << 14,), generator=gen) / 8.0}
    grown = []
    original_init, original_grown = sp.Gathered.__init__, sp.Gathered._grown
    monkeypatch.setattr(sp.Gathered, "__init__", lambda self, capacity, *a: original_init(self, 1, *a))
    monkeypatch.setattr(sp.Gathered, "_grown",
                        lambda self, b, need: grown.append(need) or original_grown(self, b, need))
    words = []
    original_scan = sp.flat_nonzero

    def scan(flags):
        words.append(int(torch.count_nonzero(flags)) * 8 * 16 < flags.numel())  # sparse enough for words
        return original_scan(flags)

    monkeypatch.setattr(sp, "flat_nonzero", scan)
    total = sum(w.numel() for w in weights.values())
    for k in (1, 1000, total // 3, total // 2 + 7, total - 5):
        for chunk_size in (1 << 15, 1000):
            got = select_topk({n: magnitude_scores(w) for n, w in weights.items()}, k, chunk_size=chunk_size)
            assert_same(got, brute_force(weights, k))
    assert grown, "the gather buffer never grew"
    assert any(words), "the word scan was never used"


@pytest.mark.parametrize("length", [0, 1, 7, 8, 9, 63, 64, 65, 1000, 4099])
def test_flat_nonzero_equals_nonzero(length):
    gen = torch.Generator().manual_seed(length)
    for density in (0.0, 0.001, 0.02, 0.3, 1.0):
        base = torch.rand(length + 11, generator=gen) < density
        for offset in (0, 3, 8):  # views that start off an 8-byte boundary fall back to nonzero
            flags = base[offset : offset + length]
            assert torch.equal(sp.flat_nonzero(flags), flags.nonzero().squeeze(1)), (density, offset)


# ---------------------------------------------------------------------------------------------
# Mixed precision, NaN, and the `into` buffer path
# ---------------------------------------------------------------------------------------------


def test_float32_and_float64_scores_ranked_together_exactly():
    """float64 thresholds between two float32 values must not round onto either (a float32 chunk compares
    against the threshold's float32 neighbours)."""
    one = torch.tensor(1.0)
    up = float(torch.nextafter(one, torch.tensor(2.0)))
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        f32 = torch.tensor([1.0, up, 1.0, up, 0.5, 2.0], dtype=torch.float32)[torch.randperm(6, generator=gen)]
        between = 1.0 + (up - 1.0) * torch.rand(5, generator=gen, dtype=torch.float64)
        f64 = torch.cat([between, torch.tensor([1.0, up], dtype=torch.float64)])
        ints = torch.tensor([1, 2**40 + 1, 0])  # int64 is ranked in float64
        scores = {"f32": f32, "f64": f64, "ints": ints}
        for k in range(sum(t.numel() for t in scores.values()) + 1):
            for chunk_size, sample_size in ((1, 1), (2, 3), (4, 2), (sel.CHUNK_SIZE, sel.SAMPLE_SIZE)):
                got = select_topk({n: tensor_scores(t) for n, t in scores.items()}, k,
                                  chunk_size=chunk_size, sample_size=sample_size)
                assert_same(got, brute_force(scores, k, magnitude=False))


def test_neighbours_bracket_the_threshold_in_float32():
    work = sp.Workspace({"x": tensor_scores(torch.zeros(1))}, 8, torch.float64)
    gen = torch.Generator().manual_seed(4)
    for t in torch.randn(200, generator=gen, dtype=torch.float64).tolist() + [1e300, -1e300, 0.0, 1.0]:
        down, up = work.neighbours(t, torch.float32)
        for bound in (down, up):  # both are float32 values
            assert float(torch.tensor(bound, dtype=torch.float32)) == bound
        assert down <= t <= up
        assert (down == up) == (float(torch.tensor(t).float()) == t)
        if down != up:
            assert float(torch.nextafter(torch.tensor(down, dtype=torch.float32), torch.tensor(np.inf))) == up


@pytest.mark.parametrize("where", ["first", "middle", "last", "heavy_ties"])
def test_nan_in_a_selectable_position_raises_naming_the_tensor(where):
    gen = torch.Generator().manual_seed(5)
    weights = heavy_tie_weights(2, 300) if where == "heavy_ties" else {
        "a": torch.randn(40, generator=gen), "b": torch.randn(33, generator=gen)}
    name = "w1" if where == "heavy_ties" else "b"
    position = {"first": 0, "middle": 15, "last": -1, "heavy_ties": 3}[where]
    weights[name].view(-1)[position] = float("nan")
    total = sum(w.numel() for w in weights.values())
    for chunk_size, sample_size in CHUNK_SAMPLE:
        for k in (1, total // 2, total - 1):
            with pytest.raises(ValueError, match=name):
                select_topk({n: magnitude_scores(w) for n, w in weights.items()}, k,
                            chunk_size=chunk_size, sample_size=sample_size)


@pytest.mark.parametrize("sampled", ["all_ties", "spread"])
def test_nan_missed_by_the_sample_is_found_by_the_pass(sampled):
    """The sample never sees the NaN: the pass finds it by counts (point bracket) or on the gathered scores."""
    gen = torch.Generator().manual_seed(8)
    w = torch.ones(200)
    w[:50] = torch.rand(50, generator=gen) + 2.0
    w[150:] = torch.rand(50, generator=gen) * 0.5
    w[123] = float("nan")  # among the ties at 1.0
    fake = (lambda idx: torch.ones(idx.numel())) if sampled == "all_ties" else (
        lambda idx: torch.linspace(0.0, 3.0, idx.numel()))
    kinds = []
    original = sp.threshold_in_bracket
    for k in (60, 100, 140):
        for chunk_size in (1, 9, 1000):
            src = dataclasses.replace(magnitude_scores(w), at=fake)
            with pytest.raises(ValueError, match="'w'"):
                work = sp.Workspace({"w": src}, chunk_size, torch.float32)
                br = sp.bracket(sel._sample_scores({"w": src}, 1024, 200), k / 200, 1, 200)
                kinds.append(br.point)
                original({"w": src}, k, br, work, {"w": torch.empty(200, dtype=torch.bool)})
            with pytest.raises(ValueError, match="'w'"):
                select_topk({"w": src}, k, chunk_size=chunk_size)
    assert all(kinds) if sampled == "all_ties" else not any(kinds)


def test_nan_outside_within_is_ignored():
    gen = torch.Generator().manual_seed(6)
    weights = {"a": torch.randn(30, generator=gen), "b": torch.randn(20, generator=gen)}
    within = random_within(weights, 6)
    for name, w in weights.items():
        w[~within[name]] = float("nan")
    available = sum(int(m.sum()) for m in within.values())
    for k in range(available + 1):
        for chunk_size, sample_size in CHUNK_SAMPLE:
            got = select_topk({n: magnitude_scores(w, within[n]) for n, w in weights.items()}, k,
                              chunk_size=chunk_size, sample_size=sample_size)
            assert_same(got, brute_force({n: w.nan_to_num(0.0) for n, w in weights.items()}, k, within))


def into_and_values(src: LayerScores) -> None:
    assert src.into is not None and src.dtype is not None
    for start, stop in ((0, src.numel), (1, src.numel - 1), (2, 3)):
        buffer = torch.full((stop - start,), 12345.0, dtype=src.dtype)
        assert torch.equal(bits(src.into(start, stop, buffer)), bits(src.values(start, stop))), (start, stop)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
                                   torch.int32])
def test_into_equals_values_for_every_score_kind(dtype):
    gen = torch.Generator().manual_seed(7)
    raw = (torch.randn(23, generator=gen) * 100)
    raw[3], raw[4] = -0.0, 0.0
    t = raw.to(dtype)
    into_and_values(tensor_scores(t))
    into_and_values(magnitude_scores(t))
    into_and_values(product_scores(t, (torch.randn(23, generator=gen) * 3).to(dtype)))
    into_and_values(product_scores(t, torch.randn(23, generator=gen)))  # mixed dtypes promote
    assert tensor_scores(t, transform=lambda x: x * 2).into is None  # other transforms go through `values`


# ---------------------------------------------------------------------------------------------
# random_scores: counter-based, seekable, process independent
# ---------------------------------------------------------------------------------------------


def philox_oracle(seed: int, n: int) -> torch.Tensor:
    """The definition, evaluated from the start of the stream: top 24 bits of each Philox4x64 output / 2^24."""
    raw = np.random.Philox(key=seed).random_raw(n)
    return torch.from_numpy(((raw >> np.uint64(40)).astype(np.float64) / 2.0**24).astype(np.float32))


def test_random_scores_follow_their_definition_and_any_slice_matches():
    for seed in (0, 1, 2**62 + 12345):
        n = 301
        full = random_scores(n, seed).values(0, n)
        assert torch.equal(full, philox_oracle(seed, n))
        src = random_scores(n, seed)
        for start in range(0, 20):
            for stop in (start + 1, start + 5, n):
                assert torch.equal(src.values(start, stop), full[start:stop])
                buffer = torch.empty(stop - start)
                assert torch.equal(src.into(start, stop, buffer), full[start:stop])
    # far into a huge stream: slices that start in different places of a Philox block agree
    big = random_scores(1 << 40, seed=5)
    start = (1 << 40) - 37
    window = big.values(start, start + 30)
    for shift in range(1, 9):
        assert torch.equal(big.values(start + shift, start + 30), window[shift:])


def test_random_scores_are_identical_in_another_process():
    from smc_trainer.engine import random_stream

    code = ("import importlib.util, sys, torch; spec = importlib.util.spec_from_file_location('rs', sys.argv[1]); "
            "rs = importlib.util.module_from_spec(spec); spec.loader.exec_module(rs); "
            "v = rs.uniform_into(987654321, 17, torch.empty(4082)); print(v.double().sum().item(), v[:5].tolist())")
    out = subprocess.run([sys.executable, "-c", code, random_stream.__file__], check=True, capture_output=True,
                         text=True).stdout.strip()
    here = random_scores(5000, seed=987654321).values(17, 4099)
    assert out == f"{here.double().sum().item()} {here[:5].tolist()}"


def test_random_selection_within_equals_reference_and_never_regenerates_blocks(monkeypatch):
    """SET's regrowth path: random scores within a mask; generated values stay proportional to the request."""
    from smc_trainer.engine import random_stream

    generated = []
    original = random_stream.uniform_into
    monkeypatch.setattr(sel, "uniform_into", lambda seed, start, out: generated.append(out.numel())
                        or original(seed, start, out))
    n = 50_000
    within = torch.arange(n) % 3 != 0
    src = random_scores(n, seed=77, within=within)
    k = 700
    got = select_topk({"r": src}, k)
    assert_same(got, reference_keep_masks({"r": src}, k))
    assert sum(generated[-2:]) <= 2 * n  # no 4M-block regeneration: the pass reads the layer once
    assert max(generated) <= n


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_selection_and_random_scores_equal_cpu():
    """The same masks on a GPU (plain nonzero, torch.kthvalue paths) and the same random scores on every device."""
    for seed, kind in enumerate(("ints", "repeated", "zeros", "mixed")):
        weights = tie_heavy_weights(seed, kind)
        within = random_within(weights, seed)
        available = sum(int(m.sum()) for m in within.values())
        for k in (1, available // 2, available - 1):
            for chunk_size, sample_size in ((3, 2), (sel.CHUNK_SIZE, sel.SAMPLE_SIZE)):
                cpu = select_topk({n: magnitude_scores(w, within[n]) for n, w in weights.items()}, k,
                                  chunk_size=chunk_size, sample_size=sample_size)
                gpu = select_topk({n: magnitude_scores(w.cuda(), within[n].cuda()) for n, w in weights.items()}, k,
                                  chunk_size=chunk_size, sample_size=sample_size)
                assert_same({n: m.cpu() for n, m in gpu.items()}, cpu)
    src = random_scores(1000, seed=3, device="cuda")
    assert torch.equal(src.values(5, 900).cpu(), random_scores(1000, seed=3).values(5, 900))
