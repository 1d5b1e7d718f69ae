"""Which way is better for a metric, declared once: every "best" a report names (its bold cells, the paper's best
method in the gaps) reads the direction from here, so a perplexity's best is its lowest and an accuracy's its
highest. Metric keys carry a split and a subset in front (`test_perplexity`, `eval_middle_accuracy`); the
direction belongs to the last part, the metric's own name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

LOWER_IS_BETTER = ("perplexity", "loss")
"""Metric names whose lowest value is best; every other metric (accuracy, BLEU, Spearman, ...) is best highest."""

K = TypeVar("K")


def lower_is_better(metric: str) -> bool:
    """True for `perplexity`, `test_perplexity`, `eval_loss`; False for `accuracy`, `test_middle_accuracy`."""
    return any(metric == name or metric.endswith(f"_{name}") for name in LOWER_IS_BETTER)


def direction_words(metric: str) -> str:
    """"lower is better" or "higher is better", as a report's headings say it."""
    return "lower is better" if lower_is_better(metric) else "higher is better"


def best_key(values: Mapping[K, float], metric: str) -> K | None:
    """The key of the best value in `values` by `metric`'s direction (ties: the first in order); None if empty."""
    if not values:
        return None
    pick = min if lower_is_better(metric) else max
    return pick(values, key=values.__getitem__)
