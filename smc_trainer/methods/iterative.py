"""`lth` and `lrr`: iterative magnitude pruning after fine-tuning, `--imp_rate` of the remaining
weights per round, so round k has sparsity exactly 1 - (1 - rate)^k.

`lth` ("LTH (After)") rewinds the kept weights to the pretrained values and the task head to its
initial values after each prune, as the paper does; `lrr` (learning-rate rewinding) keeps the
pruned fine-tuned weights and only restarts the LR schedule. Rounds are run by the pipeline;
during a round the mask is static. With the magnitude criterion the pipeline computes each round's
mask from the previous round's weights; with another criterion (`lrr --criterion obert`: the
paper's oBERT row) the trainer installs the previous round's mask and the criterion prunes within it
when the round starts, with gradients of the round's own training batches.

Under `--sparsity_pattern N:M` (`--sparsity` then 1 - N/M) the chain is the grid rounds below the pattern's
sparsity, each unstructured but keeping at least N of every M, then one last round onto exactly N of every M
within the mask before it (`imp_rounds`; selection in `smc_trainer.methods.base.select_masks`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from smc_trainer.engine.hyperparameters import HyperParameters
from smc_trainer.engine.patterns import NMPattern, parse_pattern
from smc_trainer.errors import UsageError
from smc_trainer.methods.base import SparseContext, SparseMethod, register_method, require

GRID_TOLERANCE = 5e-4  # the paper writes 0.8325 for 1 - 0.8^8 = 0.83223


def imp_rounds(rate: float, pattern: NMPattern) -> list[float]:
    """Sparsities of the rounds 1, 2, ... of a chain onto an N:M pattern: the grid rounds 1 - (1 - rate)^k below
    the pattern's sparsity, then the pattern's own as the last round.

    A grid round within GRID_TOLERANCE of the pattern's sparsity is the pattern round itself (rate 0.5, 2:4); a
    grid round just below it stays a round of its own (0.488 before 0.5 at rate 0.2): the last round then prunes
    few weights, but no round prunes more than `rate` of the remaining weights (up to that tolerance).
    """
    below = []
    while imp_sparsity(len(below) + 1, rate) < pattern.sparsity - GRID_TOLERANCE:
        below.append(imp_sparsity(len(below) + 1, rate))
    return [*below, pattern.sparsity]


def imp_round_for(sparsity: float, rate: float, pattern: NMPattern | None = None) -> int:
    """The round k whose sparsity is `sparsity` (within the paper's rounding; see `imp_rounds`), or UsageError."""
    if sparsity == 0.0:
        return 0
    if pattern is not None:
        plan = imp_rounds(rate, pattern)
        found = [k for k, s in enumerate(plan, start=1) if abs(s - sparsity) <= GRID_TOLERANCE]
        if not found:
            raise UsageError(f"--sparsity {sparsity} is not a round of iterative pruning onto --sparsity_pattern "
                             f"{pattern} at --imp_rate {rate}; its rounds give "
                             f"{', '.join(f'{s:.4f}' for s in plan)} (the last is the pattern)")
        return found[0]
    k = round(math.log(1.0 - sparsity) / math.log(1.0 - rate))
    if k < 1 or abs(1.0 - (1.0 - rate) ** k - sparsity) > GRID_TOLERANCE:
        grid = ", ".join(f"{1 - (1 - rate) ** i:.4f}" for i in range(1, 11))
        raise UsageError(f"--sparsity {sparsity} is not reached by iterative pruning at --imp_rate {rate}; "
                         f"its rounds give {grid}, ...")
    return k


def imp_sparsity(round_index: int, rate: float, pattern: NMPattern | None = None) -> float:
    """Sparsity after `round_index` rounds, rounded to 12 digits so 0.2 is 0.2, not 0.19999999999999996; under
    a pattern, round `round_index` of `imp_rounds` (UsageError past the pattern round)."""
    if pattern is None:
        return round(1.0 - (1.0 - rate) ** round_index, 12)
    plan = imp_rounds(rate, pattern)
    if not 1 <= round_index <= len(plan):
        raise UsageError(f"--imp_round must be in 1..{len(plan)} for --sparsity_pattern {pattern} at --imp_rate "
                         f"{rate}; got {round_index}")
    return plan[round_index - 1]


def round_changes(sparsity: float, rate: float, pattern: NMPattern | None) -> dict[str, Any]:
    """The training arguments of the chain's round at `sparsity`: the sparsity, and under a pattern the round's
    index when the round lies below the pattern (`--imp_round`, so such a round passes the check that a patterned
    run is at the pattern's sparsity)."""
    changes: dict[str, Any] = {"sparsity": sparsity}
    if pattern is not None and sparsity < pattern.sparsity - GRID_TOLERANCE:
        changes["imp_round"] = imp_round_for(sparsity, rate, pattern)
    return changes


@dataclass
class ImpConfig(HyperParameters):
    """Iterative magnitude pruning's knob: the fraction of the remaining weights each round removes."""

    title = "LTH / LRR (iterative magnitude pruning)"

    prefix = "imp_"

    rate: float = field(default=0.2, metadata={
        "help": "LTH/LRR: fraction of the remaining weights pruned per round (paper: 0.2)."})

    def validate(self) -> None:
        super().validate()
        self.require(0.0 < self.rate < 1.0, f"{self.param('rate')} must be in (0, 1); got {self.rate}")


class IterativeMethod(SparseMethod):
    phase = "iterative"
    rewind: bool = False
    pattern_refusal = None  # rounds below the pattern keep at least N of every M, the last round exactly N
    default_criterion = "magnitude"
    config: ImpConfig

    @classmethod
    def validate_args(cls, args) -> None:
        """The round an --imp_round claims is the one --sparsity is (the config checked --imp_rate itself)."""
        pattern = parse_pattern(args.sparsity_pattern)
        round_index = imp_round_for(args.sparsity, args.imp_rate, pattern)
        given = getattr(args, "imp_round", None)
        if given is not None:
            require(pattern is not None and given == round_index and args.sparsity < pattern.sparsity,
                    f"--imp_round {given} marks round {given} of an iterative chain onto an N:M pattern, below the "
                    f"pattern's sparsity (set by the pipeline, not by hand); --sparsity {args.sparsity} with "
                    f"--sparsity_pattern {args.sparsity_pattern} is round {round_index}")

    @classmethod
    def prunes_in_trainer(cls, args) -> bool:
        """Whether a round's mask is chosen inside the trainer (criteria other than magnitude need its batches)."""
        return cls.criterion_name(args) != "magnitude"

    def initial_masks(self, ctx: SparseContext):
        if self.criterion is None or self.criterion.name == "magnitude":
            raise UsageError(f"--sparse_method {self.name} runs round by round through smc_trainer.runs.pipeline "
                             "(run_smc.py does this); SparseTrainer alone needs the round's mask as initial_masks=")
        # the previous round's mask, if any, is installed already: prune within it to this round's sparsity
        return self.prune(ctx, self.sparsity.density, step=0, within_current=ctx.masks.active)


@register_method("lth", config=ImpConfig)
class LTH(IterativeMethod):
    rewind = True
    order = 3
    accepts_criterion = False  # the mask is scored on the trained weights before they are rewound: magnitude
    frozen_base_conflict = ("LTH rewinds the kept weights to their pretrained values and retrains them each round; "
                            "a frozen base is never trained, so there is nothing to rewind (use omp_after)")


@register_method("lrr", config=ImpConfig)
class LRR(IterativeMethod):
    rewind = False
    order = 4
    frozen_base_conflict = ("LRR prunes each round by the magnitudes the previous round's training produced; a "
                            "frozen base never changes them, so every round would repeat one magnitude prune "
                            "(use omp_after)")
