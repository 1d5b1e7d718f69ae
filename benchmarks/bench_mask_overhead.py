"""Per-step cost of keeping static masks enforced, against the plain `transformers.Trainer`.

Model: BertForSequenceClassification with MiniLM's shapes (6 layers, hidden 384, FFN 1536, vocab
30522), random init; synthetic batches of 16 x 128 tokens; AdamW (the Trainer default), grad
clipping 1.0, CPU. Three measurements, all in one process:

1. Whole training runs, interleaved (plain Trainer, SparseTrainer, plain, sparse, ...): the
   median wall time of an optimizer step (on_step_begin -> on_step_end, first `--warmup` steps
   dropped). SparseTrainer runs `omp_before` at sparsity 0.5: masks are fixed, so per step it
   only masks gradients (before clipping) and re-masks weights (after optimizer.step).
2. In situ: inside the SparseTrainer runs, the time spent in the sparsity callback's two per-step
   hooks (`before_optimizer_step`, `on_optimizer_step`), i.e. all mask maintenance.
3. Micro-benchmark: a manual training loop on the sparse model where each iteration times the
   dense work (forward, backward, clip, AdamW step, zero_grad) and the maintenance calls the
   callback makes (`masks.apply_to_grads()`, `masks.after_optimizer_step(opt)`) separately, so the
   ratio comes from the same iterations. `after_optimizer_step` skips the weight re-mask for
   AdamW (see smc_trainer/engine/zero_preserving.py); the full re-mask pass (`apply_to_weights`), which
   other optimizers pay every step, is timed on its own too.

Memory: bytes of mask per prunable weight, and a check that no parameter is duplicated.

Usage:  python benchmarks/bench_mask_overhead.py [--steps 20] [--warmup 3] [--repeats 3] [--micro 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch
from transformers import Trainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import (  # noqa: E402
    BATCH,
    StepTimer,
    SyntheticBatches,
    make_sparse_trainer,
    md_table,
    median,
    minilm,
    training_args,
)

SPARSE_FLAGS = dict(sparse_method="omp_before", sparsity=0.5)


def instrument_callback(trainer) -> list[float]:
    """Accumulate, per optimizer step, the time spent in the sparsity callback's per-step hooks."""
    cb = trainer.sparsity_callback
    per_step: list[float] = []
    pending = [0.0]
    before, after = cb.before_optimizer_step, cb.on_optimizer_step

    def timed_before():
        t0 = common.clock()
        before()
        pending[0] += common.clock() - t0

    def timed_after(*args, **kwargs):
        t0 = common.clock()
        out = after(*args, **kwargs)
        per_step.append(pending[0] + common.clock() - t0)
        pending[0] = 0.0
        return out

    cb.before_optimizer_step = timed_before
    cb.on_optimizer_step = timed_after
    return per_step


def run_trainer(kind: str, steps: int, warmup: int, out_dir: str) -> dict:
    """Train `warmup + steps` steps; return step times (and maintenance times) after the warm-up."""
    timer = StepTimer()
    total = warmup + steps
    if kind == "dense":
        trainer = Trainer(model=minilm(), args=training_args(False, out_dir, total),
                          train_dataset=SyntheticBatches(BATCH * total), callbacks=[timer])
        maintenance: list[float] = []
    else:
        trainer = make_sparse_trainer(out_dir, total, callbacks=[timer], **SPARSE_FLAGS)
        maintenance = instrument_callback(trainer)
    trainer.train()
    return {"steps": timer.times[warmup:], "maintenance": maintenance[warmup:], "trainer": trainer}


def micro_benchmark(trainer, iterations: int) -> dict:
    """Manual loop on the trained sparse model: dense work and mask maintenance timed in the same iterations."""
    model, opt, masks = trainer.model, trainer.optimizer, trainer.masks
    model.train()
    batch = SyntheticBatches(BATCH, seed=1)
    inputs = {k: torch.stack([batch[i][k] for i in range(BATCH)]).to(common.DEVICE)
              for k in ("input_ids", "attention_mask", "labels")}
    dense, maint, grads_only, weights_only, remask = [], [], [], [], []
    for _ in range(iterations):
        t0 = common.clock()
        loss = model(**inputs).loss
        loss.backward()
        t1 = common.clock()
        masks.apply_to_grads()
        t2 = common.clock()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        t3 = common.clock()
        masks.after_optimizer_step(opt)
        t4 = common.clock()
        model.zero_grad(set_to_none=True)
        t5 = common.clock()
        masks.apply_to_weights()  # the full re-mask pass, for reference (a no-op on the values here)
        remask.append(common.clock() - t5)
        dense.append((t1 - t0) + (t3 - t2) + (t5 - t4))
        maint.append((t2 - t1) + (t4 - t3))
        grads_only.append(t2 - t1)
        weights_only.append(t4 - t3)
    return {"dense": median(dense), "maintenance": median(maint), "grads": median(grads_only),
            "weights": median(weights_only), "remask": median(remask), "skipped": masks.skipped_steps,
            "ratios": sorted(m / d for m, d in zip(maint, dense))}


def memory_report(trainer) -> dict:
    """Mask bytes per prunable weight; whether any parameter storage is duplicated (weight_orig etc.)."""
    masks = trainer.masks
    mask_bytes = sum(m.numel() * m.element_size() for m in masks.masks.values())
    dense_params = sum(p.numel() for p in minilm().parameters())
    sparse_params = sum(p.numel() for p in trainer.model.parameters())
    shared = all(t.param.data_ptr() == dict(trainer.model.named_parameters())[t.name].data_ptr()
                 for t in masks.targets)
    extra_tensors = [n for n, _ in trainer.model.named_buffers() if "mask" in n or "orig" in n]
    return {"prunable": masks.total, "mask_bytes": mask_bytes, "dense_params": dense_params,
            "sparse_params": sparse_params, "shared": shared, "extra_tensors": extra_tensors,
            "dtypes": sorted({str(m.dtype) for m in masks.masks.values()})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of each run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved (dense, sparse) run pairs")
    parser.add_argument("--micro", type=int, default=20, help="iterations of the micro-benchmark")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]; GPU times are synchronized")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    common.set_device(args.device)
    print(f"torch {torch.__version__}, device {common.device_label()}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.2f}; batch {BATCH}x128, "
          f"{args.repeats} x (dense, sparse) runs of {args.warmup}+{args.steps} steps", flush=True)

    runs: dict[str, list[dict]] = {"dense": [], "sparse": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for kind in ("dense", "sparse"):
                res = run_trainer(kind, args.steps, args.warmup, os.path.join(tmp, f"{kind}{r}"))
                runs[kind].append(res)
                extra = f", maintenance {median(res['maintenance']) * 1e3:.1f} ms" if kind == "sparse" else ""
                print(f"  run {r} {kind}: median step {median(res['steps']) * 1e3:.0f} ms{extra}", flush=True)
    trainer = runs["sparse"][-1]["trainer"]
    micro = micro_benchmark(trainer, args.micro)
    mem = memory_report(trainer)

    dense_runs = [median(r["steps"]) for r in runs["dense"]]
    sparse_runs = [median(r["steps"]) for r in runs["sparse"]]
    dense_step, sparse_step = median(dense_runs), median(sparse_runs)
    paired = [s / d - 1 for s, d in zip(sparse_runs, dense_runs)]
    in_situ = median([t for r in runs["sparse"] for t in r["maintenance"]])

    def pct(x: float, base: float = dense_step) -> str:
        return f"{100 * x / base:.2f}%"

    rows = [
        ["plain Trainer, optimizer step (median of run medians)", f"{dense_step * 1e3:.0f}", "100%"],
        ["SparseTrainer omp_before 0.5, optimizer step", f"{sparse_step * 1e3:.0f}",
         f"{100 * sparse_step / dense_step:.1f}% (paired run differences: "
         + ", ".join(f"{100 * p:+.1f}%" for p in paired) + ")"],
        ["in situ: sparsity callback per-step hooks (median over steps)", f"{in_situ * 1e3:.2f}", pct(in_situ)],
        ["micro: apply_to_grads + after_optimizer_step", f"{micro['maintenance'] * 1e3:.2f}",
         f"{pct(micro['maintenance'], micro['dense'])} of the same loop's dense work "
         f"({micro['dense'] * 1e3:.0f} ms); {pct(micro['maintenance'])} of the plain Trainer step"],
        ["micro: apply_to_grads alone", f"{micro['grads'] * 1e3:.2f}", pct(micro["grads"], micro["dense"])],
        ["micro: after_optimizer_step alone", f"{micro['weights'] * 1e3:.2f}", pct(micro["weights"], micro["dense"])],
        ["micro: apply_to_weights (the re-mask pass it skips)", f"{micro['remask'] * 1e3:.2f}",
         pct(micro["remask"], micro["dense"])],
    ]
    print()
    print(md_table(["measurement", "ms per step", "% of dense step"], rows))
    print()
    r = micro["ratios"]
    print(f"steps whose weight re-mask was skipped (AdamW keeps pruned zeros): {micro['skipped']} "
          f"(in the {args.micro} micro iterations and the run before them)")
    print(f"micro-benchmark maintenance/dense per iteration: min {100 * r[0]:.2f}%, median "
          f"{100 * r[len(r) // 2]:.2f}%, max {100 * r[-1]:.2f}%")
    in_situ_min = min(t for r in runs["sparse"] for t in r["maintenance"])
    dense_min = min(t for r in runs["dense"] for t in r["steps"])
    print(f"fastest observed (least disturbed): plain Trainer step {dense_min * 1e3:.0f} ms, in-situ maintenance "
          f"{in_situ_min * 1e3:.2f} ms ({pct(in_situ_min, dense_min)})")
    print(f"target (maintenance <= 2% of the dense step): in situ {pct(in_situ)}, micro "
          f"{pct(micro['maintenance'], micro['dense'])} -> "
          f"{'met' if max(in_situ / dense_step, micro['maintenance'] / micro['dense']) <= 0.02 else 'NOT met'}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print(f"memory: {mem['prunable']:,} prunable weights, masks {mem['mask_bytes']:,} bytes "
          f"({mem['mask_bytes'] / mem['prunable']:.2f} byte/weight, {', '.join(mem['dtypes'])}); parameters "
          f"{mem['sparse_params']:,} (dense model {mem['dense_params']:,}); masks' targets are the model's own "
          f"parameters: {mem['shared']}; mask/orig buffers on the model: {mem['extra_tensors'] or 'none'}")


if __name__ == "__main__":
    main()
