"""Cross-validation: a recipe with `folds: K` run without --fold trains every fold and reports them pooled.

Each fold is an ordinary run of the same stages (its own dense cache entry, its own output folder
`<output_dir>/fold-<k>`, its own metrics). The pooled outcome of the folds holds, per evaluated split,
`<split>_correct` and `<split>_total` summed over the folds and `<split>_accuracy` = total correct /
total examples (SMC-Bench's MAWPS and ASDiv-A numbers; a mean of fold accuracies would weight a
problem of a small fold more); every other metric is the mean over folds, and each fold's own
evaluation metrics are kept as `fold<k>/<metric>`. A CV run killed midway reuses its finished folds.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence

from transformers.utils import logging

from smc_trainer.runs.dense_cache import config_fingerprint, fingerprint_hash
from smc_trainer.runs.run_config import RunConfig, RunOutcome
from smc_trainer.tasks import check_fold

logger = logging.get_logger(__name__)

FOLD_KEY = "fold_key.json"  # the configuration hash of a finished fold, so a rerun reuses only its own folds
SUMMED = ("_correct", "_total", "_samples")

OnOutcome = Callable[["RunOutcome"], None]
Stage = Callable[["RunConfig", str, "OnOutcome | None"], list["RunOutcome"]]


def fold_configs(config: RunConfig) -> list[RunConfig] | None:
    """One config per fold when `config` is a cross-validated recipe run without --fold, else None."""
    folds, fold = config.recipe.folds, config.data_args.fold
    check_fold(config.recipe, fold)
    if not folds or fold is not None:
        return None
    return [config.with_data(fold=k) for k in range(folds)]


def pool_metrics(per_fold: Sequence[Mapping[str, float]], folds: Sequence[int] | None = None) -> dict[str, float]:
    """Pooled metrics of folds (see the module docstring); `folds` names them (default 0..K-1)."""
    folds = list(folds) if folds is not None else list(range(len(per_fold)))
    keys = [k for k in per_fold[0] if all(k in m for m in per_fold[1:])]
    pooled: dict[str, float] = {}
    for key in keys:
        values = [float(m[key]) for m in per_fold]
        pooled[key] = sum(values) if key.endswith(SUMMED) else sum(values) / len(values)
    for key in keys:
        prefix = key.removesuffix("accuracy")
        if key.endswith("_accuracy") and f"{prefix}correct" in pooled and pooled.get(f"{prefix}total"):
            pooled[key] = pooled[f"{prefix}correct"] / pooled[f"{prefix}total"]
    for k, metrics in zip(folds, per_fold, strict=True):
        pooled.update({f"fold{k}/{key}": float(v) for key, v in metrics.items() if key.startswith(("eval_", "test_"))})
    return pooled


def pool_outcomes(per_fold: Sequence[RunOutcome], output_dir: str, folds: Sequence[int] | None = None) -> RunOutcome:
    """One outcome for the folds' outcomes: pooled metrics, sparsity weighted by prunable weights, summed cost."""
    sizes = [sum(layer["total"] for layer in o.layers) or 1 for o in per_fold]

    def weighted(attribute: str) -> float:
        return sum(getattr(o, attribute) * n for o, n in zip(per_fold, sizes)) / sum(sizes)

    layers: dict[str, dict] = {}
    for outcome in per_fold:
        for layer in outcome.layers:
            row = layers.setdefault(layer["name"], {**layer, "total": 0, "kept": 0})
            row["total"] += layer["total"]
            row["kept"] += layer["kept"]
    return dataclasses.replace(
        per_fold[0],
        mask_sparsity=weighted("mask_sparsity"),
        measured_sparsity=weighted("measured_sparsity"),
        metrics=pool_metrics([o.metrics for o in per_fold], folds),
        output_dir=output_dir,
        steps=sum(o.steps for o in per_fold),
        wall_time_s=round(sum(o.wall_time_s for o in per_fold), 3),
        layers=list(layers.values()),
    )


def fold_dir(output_dir: str, fold: int) -> str:
    return os.path.join(output_dir, f"fold-{fold}")


def over_folds(config: RunConfig, output_dir: str, stage: Stage, on_outcome: OnOutcome | None = None
               ) -> list[RunOutcome]:
    """`stage(config, output_dir, on_outcome)` for a single split; for a CV recipe without --fold, the stage
    for every fold, then the folds' outcomes pooled position by position (LTH/LRR: round by round), saved in
    `output_dir` (rounds: `output_dir/round-XX`) and handed to `on_outcome`."""
    configs = fold_configs(config)
    if configs is None:
        return stage(config, output_dir, on_outcome)
    folds = [c.data_args.fold for c in configs]
    per_fold = [_run_fold(c, fold_dir(output_dir, c.data_args.fold), stage) for c in configs]
    pooled = []
    for outcomes in zip(*per_fold, strict=True):
        round_index = outcomes[0].round
        directory = output_dir if round_index is None else os.path.join(output_dir, f"round-{round_index:02d}")
        outcome = pool_outcomes(outcomes, directory, folds)
        if config.training_args.should_save:
            os.makedirs(directory, exist_ok=True)
            outcome.save(directory)
        logger.info(f"{config.recipe.name}: {len(folds)} folds pooled in {directory}")
        if on_outcome is not None:
            on_outcome(outcome)
        pooled.append(outcome)
    return pooled


def _run_fold(config: RunConfig, directory: str, stage: Stage) -> list[RunOutcome]:
    """The fold's outcomes: reused when `directory` holds this very configuration's finished run (unless
    --overwrite_output_dir), else run."""
    key = fingerprint_hash(config_fingerprint(config, include_sparse=True))
    finished = None if config.training_args.overwrite_output_dir else RunOutcome.load(directory)
    if finished is not None and _stored_key(directory) == key:
        logger.info(f"fold {config.data_args.fold}: reusing the finished run in {directory}")
        return [finished]
    resume = config.training_args.resume_from_checkpoint
    if isinstance(resume, str) and not is_inside(resume, directory):  # it names another fold's checkpoint
        config = config.with_training(resume_from_checkpoint=None)
    outcomes = stage(config, directory, None)
    if config.training_args.should_save:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, FOLD_KEY), "w", encoding="utf-8") as fh:
            json.dump({"key": key}, fh)
    return outcomes


def _stored_key(directory: str) -> str | None:
    path = os.path.join(directory, FOLD_KEY)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh).get("key")


def is_inside(path: str | bool | None, folder: str) -> bool:
    """Whether `path` (e.g. a --resume_from_checkpoint value) lies in `folder`."""
    if not isinstance(path, str):
        return False
    return os.path.commonpath([os.path.abspath(path), os.path.abspath(folder)]) == os.path.abspath(folder)
