"""Global exact top-k magnitude selection at RoBERTa-large shapes: smc_trainer against the usual baselines.

The weights are random normal float32 tensors with RoBERTa-large's prunable shapes: the word
embedding (50265 x 1024) and, per layer, q/k/v/o (1024 x 1024), fc1 (4096 x 1024) and fc2
(1024 x 4096); `--scale` scales the number of layers (1.0 = 24). At `--sparsity` s we keep
k = round-half-up((1 - s) * N) weights over all tensors together. Methods:

* ``ours``: ``select_topk({name: magnitude_scores(w)}, k)``, the copy-free path every method uses.
* ``global_keep_masks``: the public helper, given precomputed ``|w|`` tensors (the copy is not timed
  or counted, but it costs one model size of memory; reference only).
* ``cat_kthvalue``: ``torch.cat`` of all ``|w|``, ``kthvalue``, masks ``|w| >= tau`` from the slices.
* ``bisection``: 40 bisection steps of a threshold over ``[0, max|w|]``, each counting
  ``count_nonzero(|w| > t)`` chunk by chunk, then masks ``|w| > t``.
* ``prune``: ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured`` on ``nn.Linear`` /
  ``nn.Embedding`` modules holding the same weight tensors (``amount`` = the exact number to prune).
* ``floor``: one chunked pass ``torch.abs`` + ``count_nonzero(x > t)`` over all weights, the cost any
  exact method must pay at least once (ours makes one pass of seven kernels per chunk, plus a small
  sample and work on the few in-bracket scores).

Time is measured in this process, methods interleaved round by round (median of the rounds). Peak
extra memory is measured for each method once in a fresh subprocess (``--only METHOD``): peak RSS
after the method minus RSS just before it, after the weights were allocated (VmHWM is reset
through /proc/self/clear_refs where possible, else ``ru_maxrss`` is used).

Usage:  python benchmarks/bench_selection.py [--scale 1.0] [--sparsity 0.5] [--repeats 3] [--skip-prune]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from smc_trainer.engine import selection
from smc_trainer.engine.selection import global_keep_masks, keep_count, magnitude_scores, select_topk

VOCAB, HIDDEN, FFN, LAYERS = 50265, 1024, 4096, 24
CHUNK = selection.CHUNK_SIZE
METHODS = ("floor", "ours", "global_keep_masks", "cat_kthvalue", "bisection", "prune")
GB = 1e9


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------


def layer_count(scale: float) -> int:
    return max(1, round(LAYERS * scale))


def build_weights(scale: float, seed: int = 0, device: str = "cpu") -> dict[str, Tensor]:
    """RoBERTa-large-shaped prunable weights (random normal float32, drawn on the CPU so every device gets the
    same numbers), in named_modules order."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"embeddings.word_embeddings.weight": (VOCAB, HIDDEN)}
    for i in range(layer_count(scale)):
        p = f"encoder.layer.{i}."
        for proj in ("query", "key", "value"):
            shapes[p + f"attention.self.{proj}.weight"] = (HIDDEN, HIDDEN)
        shapes[p + "attention.output.dense.weight"] = (HIDDEN, HIDDEN)
        shapes[p + "intermediate.dense.weight"] = (FFN, HIDDEN)
        shapes[p + "output.dense.weight"] = (HIDDEN, FFN)
    return {name: torch.randn(shape, generator=gen).to(device) for name, shape in shapes.items()}


def total_numel(weights: dict[str, Tensor]) -> int:
    return sum(w.numel() for w in weights.values())


def chunks(w: Tensor):
    flat = w.reshape(-1)
    for start in range(0, flat.numel(), CHUNK):
        yield flat[start : start + CHUNK]


# ---------------------------------------------------------------------------------------------
# Methods: each takes (weights, k) and returns something holding the result (masks or a count)
# ---------------------------------------------------------------------------------------------


def run_floor(weights: dict[str, Tensor], k: int) -> int:
    """One pass: |w| and count_nonzero(|w| > t) per chunk (t = 0.6745, about the median of |N(0,1)|)."""
    n = 0
    for w in weights.values():
        for c in chunks(w):
            n += int(torch.count_nonzero(torch.abs(c) > 0.6745))
    return n


def run_ours(weights: dict[str, Tensor], k: int) -> dict[str, Tensor]:
    masks = select_topk({n: magnitude_scores(w) for n, w in weights.items()}, k)
    return {n: masks[n].view(w.shape) for n, w in weights.items()}


def run_global_keep_masks(abs_weights: dict[str, Tensor], density: float) -> dict[str, Tensor]:
    return global_keep_masks(abs_weights, density)


@torch.no_grad()
def run_cat_kthvalue(weights: dict[str, Tensor], k: int) -> tuple[dict[str, Tensor], float]:
    """tau = k-th largest |w| via cat + kthvalue; masks |w| >= tau (keeps every tie, so maybe > k)."""
    flat = torch.cat([w.detach().abs().reshape(-1) for w in weights.values()])
    tau = float(torch.kthvalue(flat, flat.numel() - k + 1).values)
    masks, offset = {}, 0
    for name, w in weights.items():
        masks[name] = (flat[offset : offset + w.numel()] >= tau).view(w.shape)
        offset += w.numel()
    del flat
    return masks, tau


@torch.no_grad()
def run_bisection(weights: dict[str, Tensor], k: int, steps: int = 40) -> dict[str, Tensor]:
    """Bisection on t over [0, max|w|]: smallest t found with count(|w| > t) <= k; masks |w| > t."""

    def count_above(t: float) -> int:
        return sum(int(torch.count_nonzero(torch.abs(c) > t)) for w in weights.values() for c in chunks(w))

    lo = 0.0
    hi = max(float(torch.abs(c).max()) for w in weights.values() for c in chunks(w))
    for _ in range(steps):
        mid = (lo + hi) / 2
        if count_above(mid) > k:
            lo = mid
        else:
            hi = mid
    masks = {}
    for name, w in weights.items():
        mask = torch.empty(w.numel(), dtype=torch.bool, device=w.device)
        for i, c in enumerate(chunks(w)):
            mask[i * CHUNK : i * CHUNK + c.numel()] = torch.abs(c) > hi
        masks[name] = mask.view(w.shape)
    return masks


def wrap_modules(weights: dict[str, Tensor]) -> list[nn.Module]:
    """nn.Embedding / nn.Linear modules whose weight Parameter shares storage with `weights` (no copy)."""
    modules = []
    for name, w in weights.items():
        if "embeddings" in name:
            m = nn.Embedding(w.shape[0], w.shape[1], device="meta")
        else:
            m = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
        m.weight = nn.Parameter(w)
        modules.append(m)
    return modules


def run_prune(weights: dict[str, Tensor], k: int) -> list[nn.Module]:
    """torch.nn.utils.prune.global_unstructured (L1Unstructured), pruning exactly N - k weights."""
    modules = wrap_modules(weights)
    prune.global_unstructured(
        [(m, "weight") for m in modules], pruning_method=prune.L1Unstructured, amount=total_numel(weights) - k
    )
    return modules


def prune_masks(weights: dict[str, Tensor], modules: list[nn.Module]) -> dict[str, Tensor]:
    return {name: m.weight_mask.bool() for name, m in zip(weights, modules)}


# ---------------------------------------------------------------------------------------------
# Memory: one method in a fresh process
# ---------------------------------------------------------------------------------------------


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure_one(method: str, scale: float, sparsity: float, device: str = "cpu") -> dict:
    """Run `method` once after allocating the weights; return its time and peak extra memory in bytes (host RSS
    on the CPU; on a GPU, the CUDA caching allocator's peak of allocated bytes)."""
    weights = build_weights(scale, device=device)
    if torch.device(device).type == "cuda":
        return _measure_one_cuda(method, weights, sparsity)
    n = total_numel(weights)
    k = keep_count(1.0 - sparsity, n)
    extra_input = {n_: w.abs() for n_, w in weights.items()} if method == "global_keep_masks" else None
    gc.collect()
    use_hwm = _reset_peak()
    before_rss = _status_kb("VmRSS")
    before_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    result = call_method(method, weights, k, sparsity, extra_input)
    seconds = time.perf_counter() - t0
    peak = _status_kb("VmHWM") if use_hwm else None
    after_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    extra_kb = (peak - before_rss) if (use_hwm and peak is not None and before_rss is not None) else (
        after_maxrss - before_maxrss)
    del result
    return {"method": method, "seconds": seconds, "extra_bytes": extra_kb * 1024,
            "source": "VmHWM" if use_hwm else "ru_maxrss"}


def _measure_one_cuda(method: str, weights: dict[str, Tensor], sparsity: float) -> dict:
    k = keep_count(1.0 - sparsity, total_numel(weights))
    extra_input = {n_: w.abs() for n_, w in weights.items()} if method == "global_keep_masks" else None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = call_method(method, weights, k, sparsity, extra_input)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    extra = torch.cuda.max_memory_allocated() - before
    del result
    return {"method": method, "seconds": seconds, "extra_bytes": extra, "source": "cuda max_memory_allocated"}


def measure_in_subprocess(method: str, scale: float, sparsity: float, threads: int | None,
                          env: dict[str, str] | None = None, device: str = "cpu") -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--only", method, "--scale", str(scale),
           "--sparsity", str(sparsity), "--device", device] + ([] if threads is None else ["--threads", str(threads)])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Timing and checks
# ---------------------------------------------------------------------------------------------


def call_method(method: str, weights, k: int, sparsity: float, abs_weights=None):
    if method == "floor":
        return run_floor(weights, k)
    if method == "ours":
        return run_ours(weights, k)
    if method == "global_keep_masks":
        return run_global_keep_masks(abs_weights, 1.0 - sparsity)
    if method == "cat_kthvalue":
        return run_cat_kthvalue(weights, k)
    if method == "bisection":
        return run_bisection(weights, k)
    if method == "prune":
        return run_prune(weights, k)
    raise ValueError(method)


def sync() -> None:
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    gc.collect()
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def kept(masks: dict[str, Tensor]) -> int:
    return sum(int(torch.count_nonzero(m)) for m in masks.values())


@torch.no_grad()
def check_against_kthvalue(weights: dict[str, Tensor], ours: dict[str, Tensor], tau: float, k: int) -> dict:
    """Ours must keep every |w| > tau, nothing below tau, and the first (k - #{|w| > tau}) ties in layer/index order.

    That is exactly what a stable descending sort of all |w| keeps (the oracle's definition), so it
    checks ours bit for bit; without ties it is simply ``ours == (|w| >= tau)``.
    """
    n_greater, n_ties, wrong = 0, 0, 0
    tie_flags = []
    for name, w in weights.items():
        a = w.detach().abs()
        gt, eq, m = a > tau, a == tau, ours[name]
        wrong += int(torch.count_nonzero(m & ~(gt | eq))) + int(torch.count_nonzero(gt & ~m))
        n_greater += int(torch.count_nonzero(gt))
        n_ties += int(torch.count_nonzero(eq))
        tie_flags.append(m[eq])
    flags = torch.cat(tie_flags)
    need = k - n_greater
    ties_ok = bool(flags[:need].all()) and not bool(flags[need:].any())
    return {"ties_at_tau": n_ties, "ties_kept": need, "identical": wrong == 0 and ties_ok}


def mask_diff(a: dict[str, Tensor], b: dict[str, Tensor]) -> int:
    return sum(int(torch.count_nonzero(a[n] ^ b[n])) for n in a)


_ALIASING_OPS = {"aten::slice", "aten::view", "aten::as_strided", "aten::select", "aten::reshape", "aten::detach",
                 "aten::alias", "aten::empty", "aten::squeeze", "aten::unsqueeze", "aten::lift_fresh"}


_SPARSE_OPS = {"aten::index", "aten::index_select", "aten::index_put_"}  # take a chunk, touch a few positions


def kernels_per_chunk(fn: Callable[[], object], weights: dict[str, Tensor]) -> dict[str, float]:
    """Top-level torch ops that read or write a whole CHUNK-sized tensor, per full chunk of the weights (views and
    allocations excluded): the pass structure of a method, independent of the machine's speed."""
    chunks = sum(w.numel() // CHUNK for w in weights.values())
    with torch.profiler.profile(record_shapes=True) as prof:
        fn()
    counts: dict[str, float] = {}
    for evt in prof.events():
        if evt.cpu_parent is None and evt.name not in _ALIASING_OPS and [CHUNK] in evt.input_shapes:
            counts[evt.name] = counts.get(evt.name, 0.0) + 1.0 / chunks
    return counts


def profile_ours(weights: dict[str, Tensor], k: int, repeats: int = 3) -> dict[str, float]:
    """Seconds spent in select_topk's phases, median of `repeats`: sample_scores (sample and its bracket input),
    threshold_in_bracket (the pass over all weights, which also writes every mask bit outside the bracket) and
    write_masks (finishing from the gathered in-bracket scores)."""
    runs = [_profile_once(weights, k) for _ in range(repeats)]
    return {name: statistics.median(r[name] for r in runs) for name in runs[0]}


def _profile_once(weights: dict[str, Tensor], k: int) -> dict[str, float]:
    phases: dict[str, float] = {}
    originals = {name: getattr(selection, name) for name in ("_sample_scores", "_threshold_in_bracket", "_write_masks")}

    def wrap(name, fn):
        def inner(*a, **kw):
            sync()
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                sync()
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0
        return inner

    try:
        for name, fn in originals.items():
            setattr(selection, name, wrap(name, fn))
        t0 = time.perf_counter()
        run_ours(weights, k)
        phases["total"] = time.perf_counter() - t0
    finally:
        for name, fn in originals.items():
            setattr(selection, name, fn)
    return phases


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of RoBERTa-large's 24 layers (1.0 = all)")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (median reported)")
    parser.add_argument("--prune-repeats", type=int, default=1, help="rounds that also time prune (slow)")
    parser.add_argument("--skip-prune", action="store_true", help="leave out prune.global_unstructured")
    parser.add_argument("--skip-memory", action="store_true", help="no fresh-process memory measurements")
    parser.add_argument("--profile-ops", action="store_true", help="also print a torch.profiler table of ours")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]; GPU times are synchronized")
    parser.add_argument("--only", choices=METHODS, help="internal: run one method, print time/memory as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}: torch.cuda.is_available() is False on this machine")
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise SystemExit(f"--device must be cpu or cuda[:N]; got {args.device!r}")

    if args.only:
        print(json.dumps(measure_one(args.only, args.scale, args.sparsity, args.device)))
        return

    methods = [m for m in METHODS if not (args.skip_prune and m == "prune")]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, device {where}, {torch.get_num_threads()} threads; scale {args.scale} "
          f"({layer_count(args.scale)} layers), sparsity {args.sparsity}; load average {os.getloadavg()[0]:.2f}",
          flush=True)

    memory: dict[str, dict] = {}
    if not args.skip_memory:
        for m in methods:
            memory[m] = measure_in_subprocess(m, args.scale, args.sparsity, args.threads, device=args.device)
            print(f"  memory {m}: +{memory[m]['extra_bytes'] / GB:.3f} GB ({memory[m]['seconds']:.2f} s, "
                  f"{memory[m]['source']})", flush=True)

    weights = build_weights(args.scale, device=args.device)
    n = total_numel(weights)
    k = keep_count(1.0 - args.sparsity, n)
    model_bytes = n * 4
    print(f"N = {n:,} weights ({model_bytes / GB:.2f} GB float32), keep k = {k:,}; bool masks = {n / GB:.3f} GB",
          flush=True)
    times: dict[str, list[float]] = {m: [] for m in methods}
    kept_counts: dict[str, int] = {}
    notes: dict[str, str] = {}
    ours_masks: dict[str, Tensor] = run_ours(weights, k)  # warm-up
    tau = float("nan")
    for r in range(args.repeats):
        for m in methods:
            if m == "prune" and r >= args.prune_repeats:
                continue
            # |w| for the public helper is computed outside the timed call (and freed right after)
            abs_weights = {name: w.abs() for name, w in weights.items()} if m == "global_keep_masks" else None
            seconds, out = timed(lambda m=m, a=abs_weights: call_method(m, weights, k, args.sparsity, a))
            del abs_weights
            times[m].append(seconds)
            print(f"  round {r}: {m} {seconds:.2f} s", flush=True)
            # keep only what the table needs, so the big baselines do not stack up in memory
            if m == "ours":
                ours_masks = out
            elif m == "cat_kthvalue":
                out, tau = out
            elif m == "prune":
                out = prune_masks(weights, out)
            if m != "floor":
                kept_counts[m] = kept(out)
            if m in ("global_keep_masks", "prune"):
                notes[m] = f"differs from ours at {mask_diff(out, ours_masks)} positions"
            del out
            gc.collect()

    med = {m: statistics.median(ts) for m, ts in times.items() if ts}
    check = check_against_kthvalue(weights, ours_masks, tau, k)
    notes["ours"] = f"bit-identical to stable-sort order: {check['identical']}"
    notes["cat_kthvalue"] = "keeps all |w| >= tau"
    notes["bisection"] = "keeps |w| > t"

    print()
    print(f"k-th largest |w| tau = {tau!r}: {check['ties_at_tau']} weights equal tau, ours keeps the first "
          f"{check['ties_kept']} of them (layer order, then flat index)")
    print(f"repeats: {', '.join(f'{m} {len(ts)}' for m, ts in times.items())}; medians below")
    print()
    print("| method | time (s) | ratio vs ours | fresh-process time (s) | peak extra memory (GB) | kept exact? |")
    print("|---|---|---|---|---|---|")
    for m in methods:
        mem = f"{memory[m]['extra_bytes'] / GB:.3f}" if m in memory else "n/a"
        cold = f"{memory[m]['seconds']:.2f}" if m in memory else "n/a"
        if m == "floor":
            exact = "n/a (one pass, no masks)"
        else:
            diff = kept_counts[m] - k
            exact = "yes" if diff == 0 else f"no ({diff:+d})"
            exact += f"; {notes[m]}"
        print(f"| {m} | {med[m]:.2f} | {med[m] / med['ours']:.2f}x | {cold} | {mem} | {exact} |")
    print()
    budget = n + 0.05 * model_bytes
    print(f"ours = {med['ours'] / med['floor']:.2f} x the one-pass floor ({med['floor']:.2f} s)")
    print(f"speed-up of ours: {med['cat_kthvalue'] / med['ours']:.1f}x vs cat+kthvalue (target >= 3x)"
          + (f", {med['prune'] / med['ours']:.1f}x vs prune.global_unstructured (target >= 10x)" if "prune" in med
             else ""))
    if "ours" in memory:
        print(f"ours peak extra memory {memory['ours']['extra_bytes'] / GB:.3f} GB; budget (masks + 5% of model) "
              f"{budget / GB:.3f} GB: {'met' if memory['ours']['extra_bytes'] <= budget else 'NOT met'}")
    if "ours" in memory and device.type == "cpu":
        # diagnostic: the same run with glibc serving every allocation >= 1 MiB by mmap (freed memory goes
        # straight back to the OS), i.e. the peak of live tensors without heap fragmentation
        diag = measure_in_subprocess("ours", args.scale, args.sparsity, args.threads,
                                     env={"MALLOC_MMAP_THRESHOLD_": str(1 << 20)})
        print(f"diagnostic: ours with MALLOC_MMAP_THRESHOLD_=1048576: peak extra {diag['extra_bytes'] / GB:.3f} GB")
    rounds = len(times["ours"])
    for m in methods:
        if m in ("ours", "floor") or not times[m]:
            continue
        paired = [times[m][r] / times["ours"][r] for r in range(len(times[m])) if r < rounds]
        print(f"per-round ratio {m} / ours: " + ", ".join(f"{x:.1f}" for x in paired)
              + f" (median {statistics.median(paired):.1f})")
    paired_floor = [times["ours"][r] / times["floor"][r] for r in range(rounds)]
    print("per-round ratio ours / floor: " + ", ".join(f"{x:.1f}" for x in paired_floor)
          + f" (median {statistics.median(paired_floor):.1f})")
    phases = profile_ours(weights, k)
    print("ours, phases (s): " + ", ".join(f"{name.strip('_')} {t:.2f}" for name, t in phases.items()))
    for m, fn in (("floor", run_floor), ("ours", run_ours)):
        per_chunk = kernels_per_chunk(lambda fn=fn: fn(weights, k), weights)
        sweeps = {n: c for n, c in per_chunk.items() if n not in _SPARSE_OPS}
        sparse = {n: c for n, c in per_chunk.items() if n in _SPARSE_OPS}
        print(f"{m}: {sum(sweeps.values()):.1f} sweeps per {CHUNK:,}-value chunk ("
              + ", ".join(f"{n.replace('aten::', '')} {c:.2f}" for n, c in sorted(sweeps.items())) + ")"
              + (f"; plus {sum(sparse.values()):.1f} gathers/scatters of the in-bracket positions only ("
                 + ", ".join(f"{n.replace('aten::', '')} {c:.2f}" for n, c in sorted(sparse.items())) + ")"
                 if sparse else ""))
    if args.profile_ops:
        with torch.profiler.profile() as prof:
            run_ours(weights, k)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
