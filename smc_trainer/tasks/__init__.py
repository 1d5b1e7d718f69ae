"""Task families: each turns a recipe and the argument dataclasses into a `TaskBundle`.

A family is a module exposing `build(model_args, data_args, training_args, recipe) -> TaskBundle`.
Families are imported only when asked for, so a family's optional dependencies stay optional.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

TASK_FAMILIES = {
    "multiple_choice": "smc_trainer.tasks.multiple_choice",
    "quickstart": "smc_trainer.tasks.quickstart",
}


@dataclass
class TaskBundle:
    """Everything a Trainer needs for one task, plus what the model really was (for logs and reports)."""

    model: Any
    processing_class: Any
    train_dataset: Any
    eval_dataset: Any
    test_dataset: Any | None
    data_collator: Callable | None
    compute_metrics: Callable | None
    chance_level: float | None = None
    model_source: str = ""


def task_names() -> list[str]:
    """Registered task family names, sorted."""
    return sorted(TASK_FAMILIES)


def get_task(name: str) -> ModuleType:
    """The task family module registered as `name` (it has a `build` function)."""
    if name not in TASK_FAMILIES:
        raise ValueError(f"task must be one of {', '.join(task_names())}; got {name!r}")
    return importlib.import_module(TASK_FAMILIES[name])


__all__ = ["TASK_FAMILIES", "TaskBundle", "get_task", "task_names"]
