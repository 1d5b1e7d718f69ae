"""Shared helpers for tests that train tiny models with SparseTrainer."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from datasets import Dataset
from tiny_models import VOCAB, _bert_config, make_tiny
from torch.utils.data import SequentialSampler
from transformers import BertForSequenceClassification, TrainerCallback

from smc_trainer import SparseTrainer, SparseTrainingArguments, find_targets, get_method_class
from smc_trainer.engine.patterns import nm_keep_mask, parse_pattern
from smc_trainer.engine.selection import global_keep_masks
from smc_trainer.runs.config import parse_run_config
from smc_trainer.runs.run_config import RunConfig
from smc_trainer.training.arguments.plugin_arguments import arguments_class

SEQ = 8
# flags a method needs beyond the defaults: the calibrated one-shot methods prune linears only (no embeddings)
# and compare within rows / prune layer by layer, so they need per-layer budgets
ONESHOT_FLAGS = {"prune_embeddings": False, "distribution": "uniform"}
METHOD_FLAGS = {name: ONESHOT_FLAGS for name in ("wanda_before", "wanda_after", "sparsegpt_before", "sparsegpt_after")}
CRITERION_FLAGS = {name: ONESHOT_FLAGS for name in ("wanda", "sparsegpt")}


def method_flags(method: str, criterion: str | None = None) -> dict:
    """The flags `method` (with `criterion`) needs besides --sparse_method and --sparsity (see METHOD_FLAGS)."""
    return {**METHOD_FLAGS.get(method, {}), **CRITERION_FLAGS.get(criterion, {})}


def method_argv(method: str) -> list[str]:
    """`method_flags` as command-line arguments."""
    return [part for key, value in method_flags(method).items() for part in (f"--{key}", str(value).lower())]


def tiny_classifier(arch: str, seed: int = 0) -> torch.nn.Module:
    """A 2-layer BERT or GPT-2 sequence classifier (see tiny_models.py)."""
    return make_tiny(arch, seed=seed)


def no_dropout_bert(seed: int) -> BertForSequenceClassification:
    """The tiny BERT classifier without dropout, so two training layouts (accumulated or not, DDP or one process)
    can be compared exactly."""
    torch.manual_seed(seed)
    return BertForSequenceClassification(_bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


class InOrderTrainer(SparseTrainer):
    """A SparseTrainer that takes its batches in dataset order, so two layouts see the same examples."""

    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)


def toy_dataset(n: int = 64, seed: int = 0) -> Dataset:
    """Token sequences labelled by whether token 5 occurs: learnable, deterministic."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, SEQ), generator=gen)
    labels = (ids == 5).any(dim=1).long()
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})


def sparse_args(output_dir, method: str, sparsity: float, **overrides) -> SparseTrainingArguments:
    """Arguments for an 8-step run with AdamW, weight decay and gradient accumulation 2."""
    kw = dict(
        output_dir=str(output_dir), sparse_method=method, sparsity=sparsity, max_steps=8,
        per_device_train_batch_size=8, gradient_accumulation_steps=2, learning_rate=5e-3, weight_decay=0.1,
        max_grad_norm=1.0, prune_frequency=2, gmp_start=0.0, gmp_end=0.5, rigl_update_interval=2, report_to="none",
        save_strategy="no", use_cpu=True, logging_steps=1000, disable_tqdm=True, seed=0, rigl_init_method="omp_before",
    )
    kw.update(method_flags(method, overrides.get("criterion")))
    kw.update(overrides)
    return arguments_class()(**kw)  # with the flags of the plugins loaded so far


def make_trainer(arch: str, args: SparseTrainingArguments) -> SparseTrainer:
    """A SparseTrainer on a tiny model; iterative methods get their round mask (global |w|, or N:M) as the pipeline does
    (unless their criterion prunes inside the trainer), and --distill_teacher gets a tiny teacher (another seed)."""
    model = tiny_classifier(arch)
    initial_masks = None
    method = get_method_class(args.sparse_method)
    if method.phase == "iterative" and not method.prunes_in_trainer(args):
        pattern = parse_pattern(args.sparsity_pattern)
        targets = find_targets(model)
        if pattern is None:
            initial_masks = global_keep_masks({t.name: t.param.detach().abs() for t in targets}, 1.0 - args.sparsity)
        else:  # one round straight onto the pattern (a chain's last round, from the dense model)
            initial_masks = {t.name: nm_keep_mask(t.param.detach().abs(), pattern, t.input_dim) for t in targets}
    teacher = None if args.distill_teacher == "none" else tiny_classifier(arch, seed=1)
    return SparseTrainer(model=model, args=args, train_dataset=toy_dataset(), initial_masks=initial_masks,
                         teacher=teacher)


def preset_overrides(name: str) -> dict:
    """A method preset's flags (recipes/methods/<name>.yaml) as SparseTrainingArguments overrides."""
    from smc_trainer.runs.presets import load_preset

    return load_preset(name).overrides()


def criterion_cases() -> list[tuple[str, dict]]:
    """(method, overrides) pairs that put every registered criterion, and every preset, under the invariant tests:
    each criterion with gmp, with omp_after and with lrr where the pair is valid (wanda and sparsegpt: omp_after,
    with the flags of CRITERION_FLAGS)."""
    from smc_trainer.engine.criteria import criterion_names, get_criterion_class
    from smc_trainer.runs.presets import preset_names

    cases = []
    for name in criterion_names():
        for method in ("gmp", "omp_after", "lrr"):
            if get_criterion_class(name).needs in get_method_class(method).criterion_needs:
                cases.append((method, {"criterion": name, "obert_num_grads": 4, "obert_block_size": 4}))
    for name in preset_names():
        overrides = preset_overrides(name)
        if overrides.get("obert_num_grads", 0) > 4:  # the toy data has 8 batches
            overrides["obert_num_grads"] = 4
        cases.append((overrides.pop("sparse_method"), overrides))
    return cases


def pruned_leaks(trainer: SparseTrainer) -> list[str]:
    """Names of weights (or their optimizer state) that are non-zero at a pruned position."""
    leaks = []
    state = trainer.optimizer.state
    for t in trainer.masks.targets:
        mask = trainer.masks.masks.get(t.name)
        if mask is None:
            continue
        if bool((t.param.detach()[~mask] != 0).any()):
            leaks.append(f"{t.name}:weight")
        for key, value in state.get(t.param, {}).items():
            if torch.is_tensor(value) and value.shape == t.param.shape and bool((value[~mask] != 0).any()):
                leaks.append(f"{t.name}:{key}")
    return leaks


class StepRecorder(TrainerCallback):
    """Added after SparsityCallback: after every optimizer step, records masks, counts and leaks."""

    def __init__(self, trainer: SparseTrainer):
        self.trainer = trainer
        self.initial_counts: dict[str, int] | None = None
        self.counts: list[dict[str, int]] = []
        self.masks: list[dict[str, torch.Tensor]] = []
        self.leaks: list[tuple[int, list[str]]] = []

    def _counts(self) -> dict[str, int]:
        return {n: int(m.sum()) for n, m in self.trainer.masks.masks.items()}

    def on_train_begin(self, args, state, control, **kwargs):
        self.initial_counts = self._counts()
        self.masks.append({n: m.clone() for n, m in self.trainer.masks.masks.items()})

    def on_step_end(self, args, state, control, **kwargs):
        self.counts.append(self._counts())
        self.masks.append({n: m.clone() for n, m in self.trainer.masks.masks.items()})
        leaks = pruned_leaks(self.trainer)
        if leaks:
            self.leaks.append((state.global_step, leaks))


def train_with_recorder(trainer: SparseTrainer) -> StepRecorder:
    recorder = StepRecorder(trainer)
    trainer.add_callback(recorder)
    trainer.train()
    return recorder


def round_half_up(x: float) -> int:
    """The rounding the keep counts use (`round(density x N)` with halves up, not Python's banker's rounding)."""
    return int(math.floor(x + 0.5))


def quickstart_config(tmp_path: Path, method: str, sparsity: float, *flags: str, recipe: str = "quickstart",
                      seed: int = 42) -> RunConfig:
    """A parsed run configuration of a recipe (no training): for plans, keys, records and reports."""
    return parse_run_config(["--recipe", recipe, "--sparse_method", method, "--sparsity", str(sparsity),
                             "--seed", str(seed), "--output_dir", str(tmp_path / "out"), "--report_to", "none",
                             *flags])


def tiny_config(tmp_path: Path, method: str, sparsity: float, *extra: str) -> RunConfig:
    """A quickstart run on the tiny from-scratch model, 3 steps, its own dense cache: for runs that train."""
    return parse_run_config([
        "--model_name_or_path", "tiny", "--max_steps", "3", "--num_synthetic_examples", "48",
        "--max_eval_samples", "16", "--per_device_train_batch_size", "8", "--learning_rate", "1e-2",
        "--dense_cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "out"),
        "--sparse_method", method, "--sparsity", str(sparsity), "--report_to", "none", "--disable_tqdm", "true",
        "--log_level", "warning", "--use_cpu", *extra,
    ])
