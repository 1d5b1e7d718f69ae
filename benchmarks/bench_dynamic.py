"""Cost of one RigL update, one SET update and one GMP pruning event, per event and amortized per step.

Model and data as in bench_mask_overhead.py (MiniLM-sized BERT, 16 x 128 token batches, AdamW).
For each method a SparseTrainer trains `--warmup` real steps (so AdamW state exists; RigL/SET
start from omp_before masks at sparsity 0.5, GMP from the dense model towards 0.5) and then stops.
The benchmark then drives the training step by hand, in the order the Trainer uses:

    forward + backward -> [RigL: observe dense |grad|] -> apply_to_grads -> clip -> AdamW step
    -> after_optimizer_step -> [method.update_masks(ctx, step) -> masks.set_masks(new, optimizer)] -> zero_grad

The bracketed parts are the event; everything else is the step (dense work plus the static mask
maintenance). Methods are interleaved round by round (rigl, set, gmp, rigl, ...), each round one
event per method at steps 100, 200, ... of a schedule with interval/frequency `--interval`
(RigL/SET: `update_interval`; GMP: `prune_frequency`, gmp_start 0, gmp_end 1, so every event
really prunes more). The amortized cost is event / interval, as a percentage of the median step
time measured in the same loop.

Usage:  python benchmarks/bench_dynamic.py [--interval 100] [--events 4] [--warmup 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile

import torch
from transformers import TrainerCallback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import BATCH, SyntheticBatches, make_sparse_trainer, md_table, median  # noqa: E402

METHODS = ("rigl", "set", "gmp")


class StopAfter(TrainerCallback):
    """End training after `n` optimizer steps (the schedule still sees the full max_steps)."""

    def __init__(self, n: int):
        self.n = n

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.n:
            control.should_training_stop = True


def method_flags(method: str, interval: int) -> dict:
    if method == "gmp":
        return dict(sparse_method="gmp", sparsity=0.5, prune_frequency=interval, gmp_start=0.0, gmp_end=1.0)
    return dict(sparse_method=method, sparsity=0.5, rigl_update_interval=interval, rigl_drop_fraction=0.3,
                rigl_update_end=1.0, rigl_init_method="omp_before")


def prepared_trainer(method: str, interval: int, events: int, warmup: int, out_dir: str):
    """A SparseTrainer that trained `warmup` real steps of a run long enough for `events` events."""
    total = interval * (events + 2)
    trainer = make_sparse_trainer(out_dir, total, callbacks=[StopAfter(warmup)], **method_flags(method, interval))
    trainer.train()
    assert trainer.state.global_step == warmup
    ctx = dataclasses.replace(trainer.sparsity_callback.ctx, total_steps=total)
    return trainer, ctx


def batch_inputs() -> dict[str, torch.Tensor]:
    data = SyntheticBatches(BATCH, seed=1)
    return {k: torch.stack([data[i][k] for i in range(BATCH)]).to(common.DEVICE)
            for k in ("input_ids", "attention_mask", "labels")}


def step_with_event(trainer, ctx, step: int, inputs) -> dict[str, float]:
    """One hand-driven optimizer step with a mask event at its end; returns the timed parts (seconds)."""
    model, opt, masks, method = trainer.model, trainer.optimizer, trainer.masks, trainer.sparse_method
    model.train()
    t0 = common.clock()
    model(**inputs).loss.backward()
    t1 = common.clock()
    if method.wants_dense_gradients(ctx, step):
        method.observe_dense_gradients(ctx, step)
    t2 = common.clock()
    masks.apply_to_grads()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    masks.after_optimizer_step(opt)
    t3 = common.clock()
    new = method.update_masks(ctx, step)
    t4 = common.clock()
    if new is None:
        raise RuntimeError(f"{method.name}: no mask event at step {step}")
    masks.set_masks(new, opt)
    t5 = common.clock()
    model.zero_grad(set_to_none=True)
    t6 = common.clock()
    return {"step": (t1 - t0) + (t3 - t2) + (t6 - t5), "observe": t2 - t1, "select": t4 - t3, "install": t5 - t4,
            "event": (t2 - t1) + (t5 - t3), "sparsity": masks.sparsity()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=int, default=100, help="update_interval / prune_frequency (steps)")
    parser.add_argument("--events", type=int, default=4, help="timed events per method (interleaved)")
    parser.add_argument("--warmup", type=int, default=2, help="real Trainer steps before the timed events")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]; GPU times are synchronized")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    common.set_device(args.device)
    print(f"torch {torch.__version__}, device {common.device_label()}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.2f}; interval {args.interval}, "
          f"{args.events} events per method", flush=True)

    inputs = batch_inputs()
    results: dict[str, list[dict]] = {m: [] for m in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        prepared = {m: prepared_trainer(m, args.interval, args.events, args.warmup, os.path.join(tmp, m))
                    for m in METHODS}
        for e in range(1, args.events + 1):
            for m in METHODS:
                trainer, ctx = prepared[m]
                res = step_with_event(trainer, ctx, e * args.interval, inputs)
                results[m].append(res)
                print(f"  event {e} {m} (step {e * args.interval}): event {res['event']:.3f} s "
                      f"(observe {res['observe']:.3f}, select {res['select']:.3f}, install {res['install']:.3f}), "
                      f"step {res['step']:.3f} s, sparsity after {res['sparsity']:.4f}", flush=True)

    step = median([r["step"] for rs in results.values() for r in rs])
    rows = []
    for m in METHODS:
        rs = results[m]
        event = median([r["event"] for r in rs])
        parts = ", ".join(f"{k} {median([r[k] for r in rs]):.3f}" for k in ("observe", "select", "install"))
        rows.append([m, f"{event:.3f}", parts, f"{event / step:.2f}x",
                     f"{event / args.interval * 1e3:.1f}", f"{100 * event / args.interval / step:.2f}%"])
    print()
    print(f"dense step (forward, backward, clip, AdamW, static mask upkeep), median of all rounds: {step:.3f} s")
    print()
    print(md_table(["method", "s per event (median)", "parts (s)", "event / step",
                    f"amortized ms/step @ {args.interval}", "amortized % of step"], rows))
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
