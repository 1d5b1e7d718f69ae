"""Task families: each turns a recipe and the argument dataclasses into a `TaskBundle`.

A family is a module exposing `build(model_args, data_args, training_args, recipe) -> TaskBundle`.
Families are imported only when asked for, so a family's optional dependencies stay optional.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from smc_trainer.errors import UsageError

TASK_FAMILIES = {
    "arithmetic": "smc_trainer.tasks.arithmetic",
    "causal_lm": "smc_trainer.tasks.causal_lm",
    "multiple_choice": "smc_trainer.tasks.multiple_choice",
    "protein": "smc_trainer.tasks.protein",
    "quickstart": "smc_trainer.tasks.quickstart",
    "translation": "smc_trainer.tasks.translation",
}

EvalSets = Any  # a Dataset, or a dict of named Datasets (e.g. RACE middle/high, translation directions)


@dataclass
class TaskBundle:
    """Everything a Trainer needs for one task, plus what the model really was (for logs and reports).

    `eval_dataset` / `test_dataset` may be a dict of named subsets; each is evaluated on its own
    (metrics `test_<name>_<metric>`), then `aggregate_metrics(metrics, split)` may add the headline
    numbers (e.g. `test_bleu`, the mean over translation directions).
    """

    model: Any
    processing_class: Any
    train_dataset: Any
    eval_dataset: EvalSets
    test_dataset: EvalSets | None
    data_collator: Callable | None
    compute_metrics: Callable | None
    chance_level: float | None = None
    model_source: str = ""
    aggregate_metrics: Callable[[dict[str, float], str], dict[str, float]] | None = None
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the SparseTrainer (e.g. `optimizer_cls_and_kwargs` for per-module learning
    rates); the pipeline passes them through unchanged."""
    calibration_dataset: Any = None
    """Examples of `--calibration_file`, prepared like the training split (None: calibrate on the training split)."""
    eval_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per named evaluation subset, extra keyword arguments for `trainer.evaluate` (e.g. a translation
    direction's generation kwargs: its target language's decoder start / forced BOS token)."""
    evaluate: Callable[[Any, EvalSets, str], dict[str, float]] | None = None
    """The task's own evaluation, called instead of `trainer.evaluate`: `evaluate(model, dataset, split)` gets the
    model as trained (a PeftModel under `--peft lora`: the masked adapters' forward), a split's dataset (or dict of
    named subsets) as the bundle holds it and the split's prefix (`eval` / `test`), and returns that split's metrics,
    prefixed (`test_accuracy`, `test_perplexity`, ...). The causal-LM family scores choices and generations this
    way, which no Trainer loss or logits expresses."""


def task_names() -> list[str]:
    """Registered task family names, sorted."""
    return sorted(TASK_FAMILIES)


def get_task(name: str) -> ModuleType:
    """The task family module registered as `name` (it has a `build` function)."""
    if name not in TASK_FAMILIES:
        raise UsageError(f"task must be one of {', '.join(task_names())}; got {name!r}")
    return importlib.import_module(TASK_FAMILIES[name])


def check_fold(recipe: Any, fold: int | None) -> None:
    """Reject --fold for a recipe without folds, or outside 0..K-1 (tasks that read a fold's files check it
    before reading; the runs layer checks it before planning folds)."""
    folds = recipe.folds if recipe is not None else None
    if fold is not None and not folds:
        name = recipe.name if recipe is not None else None
        raise UsageError(f"--fold is only for cross-validated recipes; recipe {name!r} has no folds")
    if fold is not None and not 0 <= fold < folds:
        raise UsageError(f"--fold must be in 0..{folds - 1} for recipe {recipe.name!r}; got {fold}")


__all__ = ["TASK_FAMILIES", "EvalSets", "TaskBundle", "check_fold", "get_task", "task_names"]
