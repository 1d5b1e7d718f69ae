"""`gmp`: gradual pruning during fine-tuning (Zhu & Gupta's cubic schedule), by magnitude or any criterion.

Every `--prune_frequency` optimizer steps between `--gmp_start` and `--gmp_end` (fractions of
training) the lowest-scoring kept weights are removed so the sparsity follows the cubic schedule
(`--gmp_anchor absolute`: at the multiples of the frequency, as the official code); the last event is at
`gmp_end` exactly and reaches the exact target. Pruned weights never come back (only currently kept
weights compete). `--gmp_initial_fraction` makes the first event a large one-shot step (GMP*), and
`--gmp_window_per_halving w` scales the pruning window with the target (GMP*'s sparsity-scaled schedule):
it ends at min(gmp_start + w log2(1 / (1 - sparsity)), gmp_end) (`engine.schedules.sparsity_scaled_end`). With
`--criterion movement` the scores accumulate over every optimizer step (hard movement pruning); with
`obert` each event builds a Fisher from fresh batch gradients.
"""

from __future__ import annotations

from smc_trainer.engine.schedules import ANCHORS, CubicSchedule, sparsity_scaled_end
from smc_trainer.methods.base import SparseContext, SparseMethod, register_method, require


@register_method("gmp")
class GMP(SparseMethod):
    phase = "during"
    order = 20
    pattern_refusal = "its gradual schedule passes through sparsities no N:M pattern has"
    default_criterion = "magnitude"
    criterion_needs = ("weights", "gradients", "training")

    @classmethod
    def validate_args(cls, args) -> None:
        require(0.0 <= args.gmp_start <= args.gmp_end <= 1.0,
                f"--gmp_start and --gmp_end must satisfy 0 <= start <= end <= 1; got {args.gmp_start}, {args.gmp_end}")
        require(args.prune_frequency >= 1, f"--prune_frequency must be >= 1; got {args.prune_frequency}")
        require(args.gmp_anchor in ANCHORS,
                f"--gmp_anchor must be one of {', '.join(ANCHORS)}; got {args.gmp_anchor!r}")
        fraction = getattr(args, "gmp_initial_fraction", 0.0)
        require(0.0 <= fraction <= 1.0, f"--gmp_initial_fraction must be in [0, 1]; got {fraction}")
        per_halving = getattr(args, "gmp_window_per_halving", 0.0)
        require(0.0 <= per_halving <= 1.0, f"--gmp_window_per_halving must be in [0, 1] (a fraction of training per "
                f"halving of the kept weights; 0 = the fixed window --gmp_start..--gmp_end); got {per_halving}")

    def schedule(self, total_steps: int) -> CubicSchedule:
        a = self.args
        initial = a.sparsity * getattr(a, "gmp_initial_fraction", 0.0)
        return CubicSchedule.from_fractions(a.sparsity, total_steps, a.gmp_start, self.window_end(),
                                            a.prune_frequency, a.gmp_anchor, initial_sparsity=initial)

    def window_end(self) -> float:
        """--gmp_end, or the sparsity-scaled end (at most --gmp_end) with --gmp_window_per_halving."""
        a = self.args
        per_halving = getattr(a, "gmp_window_per_halving", 0.0)
        if per_halving <= 0.0 or a.sparsity >= 1.0:
            return a.gmp_end
        return sparsity_scaled_end(a.sparsity, a.gmp_start, per_halving, a.gmp_end)

    def pruning_steps(self, total_steps: int) -> list[int]:
        return self.schedule(total_steps).events()

    def reached_target(self, ctx: SparseContext, step: int) -> bool:
        return step >= self.schedule(ctx.total_steps).end

    def wants_dense_gradients(self, ctx: SparseContext, step: int) -> bool:
        return self.criterion.needs == "training"

    def observe_dense_gradients(self, ctx: SparseContext, step: int) -> None:
        self.criterion.observe_step(ctx.targets, step)

    def update_masks(self, ctx: SparseContext, step: int):
        schedule = self.schedule(ctx.total_steps)
        if not schedule.is_event(step):
            return None
        target = schedule.sparsity_at(step)
        if target <= 0.0 or (ctx.masks.active and target <= ctx.masks.sparsity()):
            return None
        return self.prune(ctx, 1.0 - target, step, within_current=True)
