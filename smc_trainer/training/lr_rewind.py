"""Learning-rate rewinding at pruning events (`--lr_rewind`): the schedule restarts after each event.

The steps of training are cut into cycles at the method's pruning events (`SparseMethod.pruning_steps`);
each cycle runs the whole shape of `--lr_scheduler_type` (linear, cosine or constant) compressed to
its length, from the peak `--learning_rate` down to `--lr_rewind_final_ratio` x peak (the oBERT
recipe's cyclic 8e-5 -> 8e-6 is linear with ratio 0.1). Warmup applies to the first cycle only.
The optimizer step right after event e is the first of a new cycle, at the peak.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR

from smc_trainer.errors import UsageError

SHAPES = ("linear", "cosine", "constant", "constant_with_warmup")


def cycle_of(step: int, events: Sequence[int], total_steps: int) -> tuple[int, int]:
    """(start, length) of the cycle holding scheduler step `step` (= optimizer steps done before this one)."""
    bounds = [0, *sorted(e for e in set(events) if 0 < e < total_steps)]
    i = bisect.bisect_right(bounds, step) - 1
    start = bounds[i]
    end = bounds[i + 1] if i + 1 < len(bounds) else total_steps
    return start, max(1, end - start)


def rewinding_factor(shape: str, events: Sequence[int], total_steps: int, final_ratio: float = 0.0,
                     warmup_steps: int = 0) -> Callable[[int], float]:
    """The LR multiplier as a function of the scheduler step (LambdaLR's argument)."""
    if shape not in SHAPES:
        raise UsageError(f"--lr_rewind needs --lr_scheduler_type one of {', '.join(SHAPES)}; got {shape!r}")

    def factor(step: int) -> float:
        start, length = cycle_of(step, events, total_steps)
        if start == 0 and step < warmup_steps:
            return step / max(1, warmup_steps)
        if shape.startswith("constant"):
            return 1.0
        first = warmup_steps if start == 0 else 0
        progress = min(1.0, (step - start - first) / max(1, length - first))
        if shape == "linear":
            return 1.0 - (1.0 - final_ratio) * progress
        return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def rewinding_scheduler(optimizer: torch.optim.Optimizer, shape: str, events: Sequence[int], total_steps: int,
                        final_ratio: float = 0.0, warmup_steps: int = 0) -> LambdaLR:
    return LambdaLR(optimizer, rewinding_factor(shape, events, total_steps, final_ratio, warmup_steps))
