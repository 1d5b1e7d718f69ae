"""`gmp`: gradual magnitude pruning during fine-tuning (Zhu & Gupta's cubic schedule).

Every `--prune_frequency` optimizer steps between `--gmp_start` and `--gmp_end` (fractions of
training) the smallest-magnitude kept weights are removed so the sparsity follows the cubic
schedule (`--gmp_anchor absolute`: at the multiples of the frequency, as the official code); the last
event is at `gmp_end` exactly and reaches the exact target. Pruned weights
never come back (only currently kept weights compete).
"""

from __future__ import annotations

from smc_trainer.engine.schedules import ANCHORS, CubicSchedule
from smc_trainer.methods.base import (
    SparseContext,
    SparseMethod,
    magnitude_sources,
    register_method,
    require,
    select_masks,
)


@register_method("gmp")
class GMP(SparseMethod):
    phase = "during"
    order = 20
    pattern_refusal = "its gradual schedule passes through sparsities no N:M pattern has"

    @classmethod
    def validate_args(cls, args) -> None:
        require(0.0 <= args.gmp_start <= args.gmp_end <= 1.0,
                f"--gmp_start and --gmp_end must satisfy 0 <= start <= end <= 1; got {args.gmp_start}, {args.gmp_end}")
        require(args.prune_frequency >= 1, f"--prune_frequency must be >= 1; got {args.prune_frequency}")
        require(args.gmp_anchor in ANCHORS,
                f"--gmp_anchor must be one of {', '.join(ANCHORS)}; got {args.gmp_anchor!r}")

    def schedule(self, total_steps: int) -> CubicSchedule:
        a = self.args
        return CubicSchedule.from_fractions(a.sparsity, total_steps, a.gmp_start, a.gmp_end, a.prune_frequency,
                                            a.gmp_anchor)

    def reached_target(self, ctx: SparseContext, step: int) -> bool:
        return step >= self.schedule(ctx.total_steps).end

    def update_masks(self, ctx: SparseContext, step: int):
        schedule = self.schedule(ctx.total_steps)
        if not schedule.is_event(step):
            return None
        target = schedule.sparsity_at(step)
        if target <= 0.0 or (ctx.masks.active and target <= ctx.masks.sparsity()):
            return None
        return select_masks(ctx, magnitude_sources(ctx, within_current=True), 1.0 - target)
