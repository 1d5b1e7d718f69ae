"""Multi-stage runs: the stages each method needs, with the dense fine-tune cached and shared.

- dense:               the cached dense fine-tune (trained once per configuration)
- before/during/dynamic: one fine-tune from the pretrained checkpoint; the method acts via callbacks
- after (omp/random/wanda/sparsegpt): start from the cached dense fine-tune, prune, retrain with a fresh
                       schedule; with `--max_steps 0`, prune and evaluate as is (the dense stage keeps its budget)
- iterative (lth/lrr): rounds k = 1..R, each pruning `--imp_rate` of the remaining weights by global
                       magnitude of the previous round's weights, then retraining (LTH rewinds to
                       the pretrained weights and initial head; LRR keeps the pruned weights); under
                       `--sparsity_pattern N:M` the rounds below 1 - N/M keep at least N of every M and a
                       last round lands on N:M (`smc_trainer.methods.iterative.imp_rounds`)

Every fine-tune reports validation and test metrics separately; checkpoint selection (if the
recipe enables it) uses the split named by `--select_on` (validation by default).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from transformers import set_seed
from transformers.utils import logging

from smc_trainer.engine.masks import MASKS_NAME, MaskSet
from smc_trainer.engine.patterns import check_pattern_shapes, parse_pattern
from smc_trainer.engine.sparsity import SparsityConfig
from smc_trainer.errors import UsageError
from smc_trainer.methods import get_method_class
from smc_trainer.methods.base import SparseContext, magnitude_sources, select_masks
from smc_trainer.methods.iterative import imp_round_for, imp_sparsity, round_changes
from smc_trainer.release.hub import write_release_files
from smc_trainer.runs.dense_cache import INIT_WEIGHTS, DenseCache
from smc_trainer.runs.folds import is_inside, over_folds
from smc_trainer.runs.run_config import RESULT_NAME, RunConfig, RunOutcome
from smc_trainer.training.arguments import SparseTrainingArguments, lora_defaults
from smc_trainer.training.arguments.roles import defaults_where
from smc_trainer.training.checkpoints import last_complete_checkpoint
from smc_trainer.training.parallel import wait_for_all
from smc_trainer.training.trainer import SparseTrainer

logger = logging.get_logger(__name__)

# what the dense stage never uses: the sparse axes of the run it serves (none of them is in the dense cache key;
# a pattern or OWL would be refused for a dense run)

def build_task(config: RunConfig):
    """Build the task bundle (model, data, metric) for `config`, seeded so the head init is reproducible."""
    from smc_trainer.tasks import get_task
    set_seed(config.training_args.seed)
    return get_task(config.recipe.task).build(config.model_args, config.data_args, config.training_args,
                                               config.recipe)


def load_weights(model: torch.nn.Module, path: str) -> None:
    """Load weights into `model`, strictly: a folder written by `save_pretrained` through transformers' own loader
    (it maps the key renamings transformers applies on save, e.g. ESM's legacy `LayerNorm.gamma/beta`), a
    safetensors file written with `safetensors.torch.save_model` (the LTH rewind point) directly."""
    if os.path.isdir(path):
        source = type(model).from_pretrained(path, config=model.config, dtype=next(model.parameters()).dtype)
        missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
        del source
    else:
        missing, unexpected = load_model(model, path, strict=False)
    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    missing = [m for m in missing if m not in tied]
    if missing or unexpected:
        raise UsageError(f"{path} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")


def fine_tune(
    config: RunConfig,
    output_dir: str,
    *,
    start_from: str | None = None,
    prune_from: str | None = None,
    round_index: int | None = None,
    before_train: Callable[[torch.nn.Module], None] | None = None,
) -> RunOutcome:
    """One fine-tune of `config.training_args.sparse_method` into `output_dir`.

    `prune_from`: a finished run whose weights (and masks) give this run's mask by magnitude at this
    round's sparsity (LTH/LRR; other criteria prune within its mask in the trainer). `start_from`: weights
    loaded before training (the dense fine-tune for after-methods, the initial weights for an LTH rewind).
    A run interrupted earlier resumes from its last checkpoint in `output_dir`.
    """
    # stages never push: run_smc.py pushes the user's final run once (smc_trainer.release.hub)
    args = dataclasses.replace(config.training_args, output_dir=output_dir, push_to_hub=False)
    if not args.overwrite_output_dir and not args.resume_from_checkpoint:
        with args.main_process_first(local=False, desc="set_aside_incomplete"):  # one process renames
            set_aside_incomplete(output_dir)
    teacher_dir = teacher_source(config)  # the dense stage first (cached), before this run's model is built
    bundle = build_task(config)
    model = bundle.model
    teacher = None if teacher_dir is None else load_teacher(model, teacher_dir)
    initial_masks = None
    if prune_from is not None:
        load_weights(model, prune_from)
        if get_method_class(args.sparse_method).prunes_in_trainer(args):  # the criterion prunes within this mask
            initial_masks = _saved_masks(model, args, prune_from)
        else:
            initial_masks = _iterative_masks(model, args, prune_from)
    if start_from is not None:
        load_weights(model, start_from)
    if before_train is not None:
        before_train(model)
    eval_dataset = bundle.eval_dataset if args.select_on == "validation" else bundle.test_dataset
    trainer = SparseTrainer(
        model=model,
        args=args,
        train_dataset=bundle.train_dataset,
        eval_dataset=eval_dataset,
        processing_class=bundle.processing_class,
        data_collator=bundle.data_collator,
        compute_metrics=bundle.compute_metrics,
        initial_masks=initial_masks,
        teacher=teacher,
        calibration_dataset=bundle.calibration_dataset,
        **bundle.trainer_kwargs,
    )
    if start_from is not None:  # a LoRA run's adapter sits on these weights, pruned (after-methods)
        trainer.adapter_base = start_from
    started = time.time()
    train_result = trainer.train(resume_from_checkpoint=_resume_point(args, output_dir))
    wall = time.time() - started
    trainer.save_model()
    trainer.save_state()
    metrics = {**train_result.metrics, "train_samples": len(bundle.train_dataset)}
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    for split, dataset in (("eval", bundle.eval_dataset), ("test", bundle.test_dataset)):
        if dataset is not None:
            split_metrics = evaluate_split(trainer, bundle, split, dataset)
            trainer.log_metrics(split, split_metrics)
            trainer.save_metrics(split, split_metrics)
            metrics.update(split_metrics)
    metrics.update(trainer.masks.measured_sparsity())
    trainer.save_metrics("all", metrics)
    if args.should_save:  # card, run config, sparsity in config.json (smc_trainer.release.hub)
        write_release_files(output_dir, trainer.masks, trainer.sparsity_metadata(), metrics=metrics, run_config=config,
                            compressed=args.save_compressed, base_model=bundle.model_source or None)
    report = trainer.masks.report()
    outcome = RunOutcome(
        method=args.sparse_method,
        target_sparsity=args.sparsity,
        mask_sparsity=report["mask_sparsity"],
        measured_sparsity=report["measured_sparsity"],
        metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
        output_dir=output_dir,
        steps=trainer.state.global_step,
        wall_time_s=round(wall, 3),
        layers=[{k: r[k] for k in ("name", "group", "total", "kept")} for r in report["layers"]],
        round=round_index,
        model=bundle.model_source or str(config.model_args.model_name_or_path),
    )
    if args.should_save:
        outcome.save(output_dir)
    wait_for_all()  # under DDP no process reads this run before all of it is written
    return outcome


def evaluate_split(trainer: SparseTrainer, bundle, split: str, dataset) -> dict[str, float]:
    """Metrics of one split; a dict of named subsets is evaluated subset by subset (`<split>_<name>_...`, with
    the subset's `bundle.eval_kwargs`), then the task's `aggregate_metrics` may add the split's headline numbers.
    A task with its own `bundle.evaluate` (causal LMs) evaluates the model as trained itself."""
    metrics: dict[str, float] = {}
    if bundle.evaluate is not None:
        metrics.update(bundle.evaluate(trainer.model, dataset, split))
    elif isinstance(dataset, dict):
        for name, subset in dataset.items():
            prefix = f"{split}_{name}"
            metrics.update(trainer.evaluate(subset, metric_key_prefix=prefix, **bundle.eval_kwargs.get(name, {})))
            metrics[f"{prefix}_samples"] = len(subset)
    else:
        metrics = {**trainer.evaluate(dataset, metric_key_prefix=split), f"{split}_samples": len(dataset)}
    if bundle.aggregate_metrics is not None:
        metrics.update(bundle.aggregate_metrics(metrics, split))
    return metrics


def set_aside_incomplete(output_dir: str) -> None:
    """A run directory left by a killed run with no complete checkpoint to resume is renamed aside, never deleted."""
    if not os.path.isdir(output_dir) or not os.listdir(output_dir) or last_complete_checkpoint(output_dir):
        return
    if os.path.isfile(os.path.join(output_dir, RESULT_NAME)):
        raise UsageError(f"{output_dir} already holds a finished run; pick another output directory")
    aside = f"{output_dir}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}"
    os.rename(output_dir, aside)
    logger.warning(f"{output_dir} held an interrupted run without checkpoints; moved it to {aside}")


def _resume_point(args: SparseTrainingArguments, output_dir: str) -> str | None:
    """--resume_from_checkpoint, else the last complete checkpoint in output_dir (unless --overwrite_output_dir)."""
    if args.resume_from_checkpoint:
        return args.resume_from_checkpoint
    if args.overwrite_output_dir or not os.path.isdir(output_dir):
        return None
    last = last_complete_checkpoint(output_dir)
    if last is not None:
        logger.info(f"Resuming from {last} (pass --overwrite_output_dir to train from scratch)")
    return last


def teacher_source(config: RunConfig) -> str | None:
    """The folder of `--distill_teacher`: the cached dense fine-tune (trained now if missing), a path, or None."""
    source = config.training_args.distill_teacher
    if source == "none":
        return None
    return run_dense(config)[0] if source == "dense" else source


def load_teacher(model: torch.nn.Module, directory: str) -> torch.nn.Module:
    """A copy of the freshly built model with the teacher's weights (same architecture and head, strictly)."""
    teacher = copy.deepcopy(model)
    load_weights(teacher, directory)
    return teacher


def _saved_masks(model: torch.nn.Module, args: SparseTrainingArguments, previous: str) -> dict | None:
    """The masks a finished run saved (None for a dense run): the previous round's, pruned within this round."""
    masks = MaskSet(SparsityConfig.from_flags(args).targets(model))
    return dict(masks.masks) if masks.load(previous) else None


def _iterative_masks(model: torch.nn.Module, args: SparseTrainingArguments, previous: str) -> dict:
    """Magnitude masks at the round's sparsity (`args.sparsity`) among the weights the previous round kept, spread
    by --distribution, under a --sparsity_pattern with its floor or exactly on it (`select_masks`)."""
    sparsity = SparsityConfig.from_flags(args)
    targets = sparsity.targets(model)
    pattern = sparsity.nm
    if pattern is not None:  # the trainer checks too, but this round's selection comes first
        check_pattern_shapes(targets, pattern)
    masks = MaskSet(targets)
    if os.path.isfile(os.path.join(previous, MASKS_NAME)):
        masks.load(previous)
    ctx = SparseContext(targets, masks, sparsity, total_steps=0, accumulate_gradients=lambda n: None)
    return select_masks(ctx, magnitude_sources(ctx, within_current=masks.active), sparsity.density)


# ---------------------------------------------------------------------------------------------
# Stages per method phase
# ---------------------------------------------------------------------------------------------


def run_dense(config: RunConfig) -> tuple[str, RunOutcome]:
    """The cached dense fine-tune of this configuration: (its directory, its outcome)."""
    cache = DenseCache(config.training_args.dense_cache_dir)
    # a --resume_from_checkpoint names the user's run, never the dense entry (which resumes its own .partial)
    # after-methods with --peft lora recover the pruned *full* dense fine-tune, shared with every other run
    dense_config = dense_stage_config(config)
    key = cache.key(dense_config)

    def train(directory: str) -> None:
        def save_initial(model: torch.nn.Module) -> None:
            os.makedirs(directory, exist_ok=True)
            if dense_config.training_args.should_save:  # one writer under DDP
                save_model(model, os.path.join(directory, INIT_WEIGHTS))

        fine_tune(dense_config, directory, before_train=save_initial)

    directory = cache.get_or_train(key, train, describe=dense_config)
    outcome = RunOutcome.load(directory)
    if outcome is None:
        raise RuntimeError(f"dense cache entry {directory} has no {RESULT_NAME}")
    # the entry was trained in `<key>.partial` and renamed when complete: report where it is now
    return directory, dataclasses.replace(outcome, output_dir=directory)


def dense_stage_config(config: RunConfig) -> RunConfig:
    """The configuration of `config`'s dense stage: the dense method, every sparse axis reset, full fine-tuning."""
    return config.with_training(sparse_method="dense", sparsity=0.0, resume_from_checkpoint=None,
                                **{**dense_resets(), **full_fine_tuning(), **dense_budget(config)})


def dense_resets() -> dict[str, Any]:
    """The flags the dense stage sets back to their defaults (declared `dense_reset=True`): the sparse axes that
    would otherwise make the dense fine-tune differ from the one every method shares."""
    return defaults_where(SparseTrainingArguments, dense_reset=True)


def dense_budget(config: RunConfig) -> dict[str, Any]:
    """`--max_steps 0` means "no retraining after pruning", never a dense fine-tune of 0 steps: the dense stage
    then trains by `--num_train_epochs` (max_steps -1, the default, so it shares the cache entry of runs that
    never set --max_steps)."""
    return {"max_steps": -1} if config.training_args.max_steps == 0 else {}


def full_fine_tuning() -> dict[str, Any]:
    """The training arguments of full fine-tuning: --peft none and every LoRA flag at its default."""
    return {"peft": "none", **lora_defaults()}


def run_after(config: RunConfig, output_dir: str) -> RunOutcome:
    """Prune the cached dense fine-tune (by the method's criterion) and retrain it."""
    dense_dir, _ = run_dense(config)
    return fine_tune(config, output_dir, start_from=dense_dir)


def run_iterative(
    config: RunConfig,
    chain_dir: str,
    rounds: int | None = None,
    on_round: Callable[[RunOutcome], None] | None = None,
) -> list[RunOutcome]:
    """LTH/LRR rounds 1..R in `chain_dir/round-XX`; finished rounds are reused, so a chain resumes."""
    args = config.training_args
    pattern = parse_pattern(args.sparsity_pattern)
    rounds = rounds if rounds is not None else imp_round_for(args.sparsity, args.imp_rate, pattern)
    rewind = get_method_class(args.sparse_method).rewind
    dense_dir, _ = run_dense(config)
    previous, outcomes = dense_dir, []
    for k in range(1, rounds + 1):
        round_dir = os.path.join(chain_dir, f"round-{k:02d}")
        outcome = RunOutcome.load(round_dir)
        if outcome is None:
            # an explicit --resume_from_checkpoint belongs to the round whose folder holds it, not to every round
            resume = args.resume_from_checkpoint if is_inside(args.resume_from_checkpoint, round_dir) else None
            changes = round_changes(imp_sparsity(k, args.imp_rate, pattern), args.imp_rate, pattern)
            round_config = config.with_training(**changes, resume_from_checkpoint=resume)
            start = os.path.join(dense_dir, INIT_WEIGHTS) if rewind else None
            outcome = fine_tune(round_config, round_dir, start_from=start, prune_from=previous, round_index=k)
        if on_round is not None:
            on_round(outcome)
        outcomes.append(outcome)
        previous = round_dir
    return outcomes


def run(config: RunConfig, output_dir: str | None = None) -> list[RunOutcome]:
    """Run `config`'s method with every stage it needs; returns one outcome (a list of rounds for LTH/LRR).
    A cross-validated recipe run without --fold runs every fold and returns the pooled outcomes (`folds`)."""
    return over_folds(config, output_dir or config.training_args.output_dir, run_split)


def run_split(config: RunConfig, output_dir: str, on_round: Callable[[RunOutcome], None] | None = None
              ) -> list[RunOutcome]:
    """`run` on one data split (one fold); `on_round` sees each finished LTH/LRR round."""
    args = config.training_args
    phase = get_method_class(args.sparse_method).phase
    if phase == "dense" and args.peft != "none":  # a dense LoRA fine-tune: not the cached full one
        return [fine_tune(config, output_dir)]
    if phase == "dense":
        dense_dir, outcome = run_dense(config)
        if args.should_save:
            _link_tree(dense_dir, output_dir)
        return [outcome]
    if phase == "after":
        return [run_after(config, output_dir)]
    if phase == "iterative":
        return run_iterative(config, output_dir, on_round=on_round)
    return [fine_tune(config, output_dir)]


def _link_tree(source: str, destination: str) -> None:
    """Expose a cached run in `destination` by hard links (no extra disk), copying where links fail."""
    if os.path.abspath(source) == os.path.abspath(destination):
        return
    os.makedirs(destination, exist_ok=True)
    for name in os.listdir(source):
        src, dst = os.path.join(source, name), os.path.join(destination, name)
        if os.path.isdir(src) or os.path.exists(dst):
            continue
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
