"""`lth` and `lrr`: iterative magnitude pruning after fine-tuning, `--imp_rate` of the remaining
weights per round, so round k has sparsity exactly 1 - (1 - rate)^k.

`lth` ("LTH (After)") rewinds the kept weights to the pretrained values and the task head to its
initial values after each prune, as the paper does; `lrr` (learning-rate rewinding) keeps the
pruned fine-tuned weights and only restarts the LR schedule. Rounds are run by the pipeline;
during a round the mask is static. With the magnitude criterion the pipeline computes each round's
mask from the previous round's weights; with another criterion (`lrr --criterion obert`: the
paper's oBERT row) the trainer installs the previous round's mask and the criterion prunes within it
when the round starts, with gradients of the round's own training batches.
"""

from __future__ import annotations

import math

from smc_trainer.errors import UsageError
from smc_trainer.methods.base import SparseContext, SparseMethod, register_method, require

GRID_TOLERANCE = 5e-4  # the paper writes 0.8325 for 1 - 0.8^8 = 0.83223


def imp_round_for(sparsity: float, rate: float) -> int:
    """The round k with 1 - (1 - rate)^k == sparsity (within the paper's rounding), or ValueError."""
    if sparsity == 0.0:
        return 0
    k = round(math.log(1.0 - sparsity) / math.log(1.0 - rate))
    if k < 1 or abs(1.0 - (1.0 - rate) ** k - sparsity) > GRID_TOLERANCE:
        grid = ", ".join(f"{1 - (1 - rate) ** i:.4f}" for i in range(1, 11))
        raise UsageError(f"--sparsity {sparsity} is not reached by iterative pruning at --imp_rate {rate}; "
                         f"its rounds give {grid}, ...")
    return k


def imp_sparsity(round_index: int, rate: float) -> float:
    """Sparsity after `round_index` rounds, rounded to 12 digits so 0.2 is 0.2, not 0.19999999999999996."""
    return round(1.0 - (1.0 - rate) ** round_index, 12)


class IterativeMethod(SparseMethod):
    phase = "iterative"
    rewind: bool = False
    pattern_refusal = (
        "its rounds prune --imp_rate of the remaining weights, so they reach sparsities 1 - (1 - rate)^k (0.2, 0.36, "
        "0.488, 0.59, ... at the default 0.2), which never land on the pattern's 1 - N/M (0.5 for 2:4), and every "
        "round before the last would have to keep at least N of every M. A schedule with a last round onto the "
        "pattern is not implemented; for N:M after fine-tuning use omp_after (then retrain), or omp_before")
    default_criterion = "magnitude"

    @classmethod
    def validate_args(cls, args) -> None:
        require(0.0 < args.imp_rate < 1.0, f"--imp_rate must be in (0, 1); got {args.imp_rate}")
        imp_round_for(args.sparsity, args.imp_rate)

    @classmethod
    def prunes_in_trainer(cls, args) -> bool:
        """Whether a round's mask is chosen inside the trainer (criteria other than magnitude need its batches)."""
        return cls.criterion_name(args) != "magnitude"

    def initial_masks(self, ctx: SparseContext):
        if not self.prunes_in_trainer(self.args):
            raise UsageError(f"--sparse_method {self.name} runs round by round through smc_trainer.runs.pipeline "
                             "(run_smc.py does this); SparseTrainer alone needs the round's mask as initial_masks=")
        # the previous round's mask, if any, is installed already: prune within it to this round's sparsity
        return self.prune(ctx, 1.0 - self.args.sparsity, step=0, within_current=ctx.masks.active)


@register_method("lth")
class LTH(IterativeMethod):
    rewind = True
    order = 3
    accepts_criterion = False  # the mask is scored on the trained weights before they are rewound: magnitude
    frozen_base_conflict = ("LTH rewinds the kept weights to their pretrained values and retrains them each round; "
                            "a frozen base is never trained, so there is nothing to rewind (use omp_after)")


@register_method("lrr")
class LRR(IterativeMethod):
    rewind = False
    order = 4
    frozen_base_conflict = ("LRR prunes each round by the magnitudes the previous round's training produced; a "
                            "frozen base never changes them, so every round would repeat one magnitude prune "
                            "(use omp_after)")
