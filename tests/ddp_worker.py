"""One process of the multi-process test (tests/training/test_distributed.py); not a test module itself.

    accelerate launch --multi_gpu --num_processes 2 tests/ddp_worker.py --out DIR [--cases rigl,gmp,...]

Trainer cases train a tiny BERT per case on this process's shard of the data, from weights
initialised with a process-dependent seed (DDP must synchronise them before any mask is chosen).
Pipeline cases run `smc_trainer.runs.pipeline.run` (dense cache, after-method retraining, LTH rounds).
After every `train()` each process writes `DIR/<case>.<stage>.rank<r>.safetensors` (its masks and
weights) and `.json` (counts, schedule position, digests of its data and of the gradients the
method read); the test compares the processes bit for bit. Cases named `fault_*` plant a known
divergence, to prove that the comparison can fail.
"""

from __future__ import annotations

import argparse
import faulthandler
import hashlib
import json
import os
import sys
import time

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sparse_helpers import no_dropout_bert, sparse_args, toy_dataset  # noqa: E402
from tiny_models import make_tiny  # noqa: E402

import smc_trainer.engine.criteria.random as random_before_module  # noqa: E402  (random scores: the criterion)
from smc_trainer import SparseTrainer  # noqa: E402
from smc_trainer.engine.selection import keep_count  # noqa: E402
from smc_trainer.runs import pipeline  # noqa: E402
from smc_trainer.runs.config import parse_run_config  # noqa: E402

SPARSITY = 0.59
TEACHER_SEED = 7
# one SGD step (no momentum, decay or clipping, so the update is lr x the gradient) of 2 micro-batches of 4 per
# process, task + KD loss, no dropout: the test replays the 16 examples in one process and must land on the same
# weights, which holds only if the KD term is normalized alike with one process and with two
KD_SCALE = dict(sparse_method="omp_before", distill_teacher="dense", distill_hardness=0.5, distill_temperature=2.0,
                max_steps=1, optim="sgd", learning_rate=0.5, weight_decay=0.0, max_grad_norm=0.0, warmup_steps=0,
                lr_scheduler_type="constant")
# every trainer case: 6 optimizer steps of 2 micro-batches of 4 examples per process
COMMON = dict(max_steps=6, per_device_train_batch_size=4, gradient_accumulation_steps=2, rigl_update_interval=2,
              prune_frequency=1, gmp_start=0.0, gmp_end=1.0, snip_batches=2, rigl_drop_fraction=0.5)
TRAINER_CASES: dict[str, dict] = {
    "rigl": dict(sparse_method="rigl", rigl_init_method="random_before"),
    "rigl_snip": dict(sparse_method="rigl", rigl_init_method="snip"),
    "set": dict(sparse_method="set", rigl_init_method="omp_before"),
    "gmp": dict(sparse_method="gmp"),
    "random_before": dict(sparse_method="random_before"),
    "snip": dict(sparse_method="snip"),
    # LoRA (--peft lora): a frozen base pruned by GMP on schedule, and SNIP scoring the frozen base's gradients
    "lora_gmp": dict(sparse_method="gmp", peft="lora", lora_r=4),
    "lora_snip": dict(sparse_method="snip", peft="lora", lora_r=4),
    # one-shot activation-aware criteria: every process calibrates on the same examples (no distributed sampler)
    # after DDP has broadcast rank 0's weights, so both prune alike (and SparseGPT updates the weights alike)
    "wanda_before": dict(sparse_method="omp_before", criterion="wanda"),
    "sparsegpt_before": dict(sparse_method="omp_before", criterion="sparsegpt"),
    # distillation from a frozen teacher (the same on both processes, never wrapped by DDP), alone and with LoRA
    "gmp_kd": dict(sparse_method="gmp", distill_teacher="dense", distill_hardness=0.5),
    "lora_gmp_kd": dict(sparse_method="gmp", peft="lora", lora_r=4, distill_teacher="dense", distill_hardness=0.5),
    # one plain SGD step without dropout, its inputs recorded: the test replays them in one process (KD_SCALE)
    "kd_scale": dict(KD_SCALE),
    # planted faults: random scores seeded by rank; SNIP gradients from the bare (never all-reduced) model
    "fault_rank_seed": dict(sparse_method="random_before"),
    "fault_local_snip": dict(sparse_method="snip"),
}
GTS_FIXTURE = "gts_fixture"  # tests/training/test_distributed.py writes the tiny GTS encoder, data and recipe here
PIPELINE_CASES: dict[str, list[str]] = {  # run in this order: the others reuse the dense cache omp_after trains
    "omp_after": ["--sparse_method", "omp_after", "--sparsity", "0.5"],
    "random_after": ["--sparse_method", "random_after", "--sparsity", "0.5"],  # seeded scores, not the rank's RNG
    "lth": ["--sparse_method", "lth", "--sparsity", "0.36"],
    "lrr": ["--sparse_method", "lrr", "--sparsity", "0.36"],  # keeps each round's trained weights (no rewind)
    # GTS (arithmetic) with distillation from its dense fine-tune: the per-step scores of the tree decoder under
    # teacher forcing; the dense stage is trained under DDP first (its own cache), then the GMP + KD stage
    "gts_kd": ["--sparse_method", "gmp", "--sparsity", "0.5", "--distill_teacher", "dense"],
    "gts_lora_kd": ["--sparse_method", "gmp", "--sparsity", "0.5", "--distill_teacher", "dense", "--peft", "lora",
                    "--lora_r", "4"],
}
CASES = [*TRAINER_CASES, *PIPELINE_CASES]


def digest(tensors: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def kd_scale_trainer_kwargs(rank: int) -> dict:
    """Model and teacher of the KD_SCALE case (the DDP run's rank-0 weights, which DDP broadcasts)."""
    return dict(model=no_dropout_bert(1000 + rank), teacher=no_dropout_bert(TEACHER_SEED))


class RecordingTrainer(SparseTrainer):
    """Records the data each process trains on and the gradients its method reads; dumps its state after train()."""

    case = "unnamed"
    out = "."

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.record: dict = {"grad_digests": [], "data_digests": []}
        method, callback = self.sparse_method, self.sparsity_callback
        observe, accumulate = method.observe_dense_gradients, callback.accumulate_gradients

        def observe_and_record(ctx, step):  # RigL: the gradients it grows by, before masking
            observe(ctx, step)
            self.record["grad_digests"].append(digest([method._grad_scores[t.name] for t in self.masks.targets]))

        def accumulate_and_record(n):  # SNIP (also as RigL's initial mask): the gradients it scores
            accumulate(n)
            self.record["grad_digests"].append(digest([t.param.grad for t in self.masks.targets]))

        method.observe_dense_gradients = observe_and_record
        callback.accumulate_gradients = accumulate_and_record

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.record["data_digests"].append(digest([inputs["input_ids"]]))
        if self.case == "kd_scale":  # the micro-batches themselves, for the one-process replay
            self.inputs_seen = [*getattr(self, "inputs_seen", []), {k: v.detach().cpu() for k, v in inputs.items()}]
        return super().training_step(model, inputs, num_items_in_batch)

    def train(self, *args, **kwargs):
        result = super().train(*args, **kwargs)
        self.dump()
        return result

    def dump(self) -> None:
        rank = self.args.process_index
        stage = os.path.basename(self.args.output_dir.rstrip("/")).removesuffix(".partial")
        stage = "dense" if self.args.sparse_method == "dense" else stage
        targets = self.masks.targets
        self.record.update(
            rank=rank,
            world_size=self.args.world_size,
            method=self.args.sparse_method,
            target_sparsity=self.args.sparsity,
            kept=self.masks.kept(),
            expected_kept=keep_count(1.0 - self.args.sparsity, self.masks.total),
            nonzero=sum(int(torch.count_nonzero(t.param)) for t in targets),
            sparse_step=self.sparsity_callback.step,
            global_step=self.state.global_step,
            mask_events=len(self.sparsity_callback.events),
            wrapped=type(self.model_wrapped).__name__,
            # the masked tensors are those DDP synchronises and the optimizer updates (no copies); a LoRA run's
            # frozen base is in the model but in no optimizer group
            masks_on_trained_tensors=all(
                any(t.param is p for p in self.model_wrapped.parameters())
                and (not t.param.requires_grad
                     or any(t.param is p for g in self.optimizer.param_groups for p in g["params"])) for t in targets),
        )
        tensors = {f"mask/{n}": m.cpu() for n, m in self.masks.masks.items()}
        tensors.update({f"weight/{n}": p.detach().cpu().clone() for n, p in self.model.named_parameters()})
        # prunable weights under their plain names too (the masks' names; a LoRA model names them differently)
        tensors.update({f"weight/{t.name}": t.param.detach().cpu().clone() for t in targets})
        for i, batch in enumerate(getattr(self, "inputs_seen", [])):
            tensors.update({f"input/{i}/{k}": v.contiguous() for k, v in batch.items()})
        base = os.path.join(self.out, f"{self.case}.{stage}.rank{rank}")
        save_file(tensors, base + ".safetensors")
        with open(base + ".json", "w", encoding="utf-8") as fh:
            json.dump(self.record, fh, indent=1)


class LocalSnipTrainer(RecordingTrainer):
    """The bug a SNIP implementation makes under DDP: gradients through the bare module are never all-reduced."""

    def _accumulate_gradients(self, n_batches: int) -> None:
        wrapped, self.model_wrapped = self.model_wrapped, self.model
        try:
            super()._accumulate_gradients(n_batches)
        finally:
            self.model_wrapped = wrapped


def run_trainer_case(case: str, out: str) -> None:
    rank = int(os.environ.get("RANK", "0"))
    config = {**COMMON, **TRAINER_CASES[case]}
    args = sparse_args(os.path.join(out, case), config.pop("sparse_method"), SPARSITY, **config)
    # the model differs per process until DDP broadcasts rank 0's weights; a teacher is the same on both
    models = dict(model=make_tiny("bert", seed=1000 + rank),
                  teacher=make_tiny("bert", seed=TEACHER_SEED) if args.distill_teacher != "none" else None)
    if case == "kd_scale":
        models = kd_scale_trainer_kwargs(rank)
    trainer_cls = type(case, (LocalSnipTrainer if case == "fault_local_snip" else RecordingTrainer,),
                       {"case": case, "out": out})
    trainer = trainer_cls(args=args, train_dataset=toy_dataset(), **models)
    original_mix_seed = random_before_module.mix_seed
    if case == "fault_rank_seed":
        random_before_module.mix_seed = lambda seed, *parts: original_mix_seed(seed + rank, *parts)
    try:
        trainer.train()
    finally:
        random_before_module.mix_seed = original_mix_seed


def pipeline_argv(case: str, out: str) -> list[str]:
    """The case's run flags: the tiny synthetic task, or for gts_* the tiny GTS of tests/arithmetic_helpers.py."""
    if case.startswith("gts_"):
        from arithmetic_helpers import TINY_GTS_FLAGS

        fixture = os.path.join(out, GTS_FIXTURE)
        with open(os.path.join(fixture, "paths.json"), encoding="utf-8") as fh:
            paths = json.load(fh)
        return ["--recipe", paths["recipe"], "--model_name_or_path", paths["encoder"], "--data_dir", paths["data"],
                "--fold", "0", "--max_steps", "3", "--per_device_train_batch_size", "2",
                "--per_device_eval_batch_size", "4", "--generation_max_length", "8", "--save_strategy", "no",
                "--prune_frequency", "1", "--gmp_start", "0", "--gmp_end", "0.7", "--cache_dir",
                os.path.join(fixture, "hf"), "--dense_cache_dir", os.path.join(out, "cache_gts"),
                "--output_dir", os.path.join(out, case), *TINY_GTS_FLAGS, *PIPELINE_CASES[case]]
    return ["--model_name_or_path", "tiny", "--max_steps", "3", "--num_synthetic_examples", "48",
            "--max_eval_samples", "16", "--per_device_train_batch_size", "4", "--learning_rate", "1e-2",
            "--dense_cache_dir", os.path.join(out, "cache"), "--output_dir", os.path.join(out, case),
            "--report_to", "none", "--disable_tqdm", "true", "--log_level", "warning", "--use_cpu",
            *PIPELINE_CASES[case]]


def run_pipeline_case(case: str, out: str) -> None:
    config = parse_run_config(pipeline_argv(case, out))
    original = pipeline.SparseTrainer
    pipeline.SparseTrainer = type(case, (RecordingTrainer,), {"case": case, "out": out})
    try:
        pipeline.run(config)
    finally:
        pipeline.SparseTrainer = original


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--timeout", type=float, default=240.0,
                        help="seconds after which this process prints every thread's stack and exits (a hang)")
    opts = parser.parse_args(argv)
    unknown = [c for c in opts.cases.split(",") if c not in CASES]
    if unknown:
        raise SystemExit(f"--cases: unknown {', '.join(unknown)}; choose from {', '.join(CASES)}")
    faulthandler.dump_traceback_later(opts.timeout, exit=True)
    torch.set_num_threads(1)
    os.makedirs(opts.out, exist_ok=True)
    for case in opts.cases.split(","):
        started = time.perf_counter()
        (run_trainer_case if case in TRAINER_CASES else run_pipeline_case)(case, opts.out)
        print(f"ddp_worker rank {os.environ.get('RANK')}: {case} took {time.perf_counter() - started:.1f}s", flush=True)


if __name__ == "__main__":
    main()
