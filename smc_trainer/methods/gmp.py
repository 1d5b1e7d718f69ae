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

from dataclasses import dataclass, field

from smc_trainer.engine.hyperparameters import HyperParameters
from smc_trainer.engine.schedules import ANCHORS, CubicSchedule, sparsity_scaled_end
from smc_trainer.methods.base import SparseContext, SparseMethod, register_method


@dataclass
class GmpConfig(HyperParameters):
    """GMP's pruning window, its events, and GMP*'s large first step and sparsity-scaled window."""

    title = "GMP (gradual magnitude pruning)"

    prefix = "gmp_"

    start: float = field(default=0.1, metadata={
        "help": "GMP: fraction of training steps at which pruning starts (paper: 0.1)."})
    end: float = field(default=0.8, metadata={
        "help": "GMP: fraction of training steps at which the target sparsity is reached (paper: 0.8)."})
    frequency: int = field(default=100, metadata={
        "flag": "prune_frequency", "help": "GMP: optimizer steps between pruning events (paper: 500-4000)."})
    anchor: str = field(default="start", metadata={
        "choices": ANCHORS,
        "help": "GMP: where pruning events fall: start (every --prune_frequency steps from the first pruning step) "
                "or absolute (at multiples of --prune_frequency, as the official code). Both add a last event at "
                "--gmp_end that reaches the exact target."})
    initial_fraction: float = field(default=0.0, metadata={
        "omit_at_default": True, "variant": "{label}, initial step {value}", "variant_order": 90,
        "help": "GMP: the first pruning event jumps to this fraction of --sparsity in one shot, then the cubic "
                "schedule continues from there (GMP*: a large first step; 0 = Zhu & Gupta)."})
    window_per_halving: float = field(default=0.0, metadata={
        "omit_at_default": True, "variant": "{label}, window {value}/halving", "variant_order": 100,
        "help": "GMP: scale the pruning window with the target sparsity (GMP*'s sparsity-scaled schedule): this "
                "fraction of training per halving of the kept weights, so the window ends at "
                "min(--gmp_start + w * log2(1 / (1 - sparsity)), --gmp_end). 0 = the fixed window."})

    def validate(self) -> None:
        super().validate()
        start, end = self.param("start"), self.param("end")
        self.require(0.0 <= self.start <= self.end <= 1.0,
                     f"{start} and {end} must satisfy 0 <= start <= end <= 1; got {self.start}, {self.end}")
        self.require(self.frequency >= 1, f"{self.param('frequency')} must be >= 1; got {self.frequency}")
        self.require(0.0 <= self.initial_fraction <= 1.0,
                     f"{self.param('initial_fraction')} must be in [0, 1]; got {self.initial_fraction}")
        self.require(0.0 <= self.window_per_halving <= 1.0,
                     f"{self.param('window_per_halving')} must be in [0, 1] (a fraction of training per halving of "
                     f"the kept weights; 0 = the fixed window {start}..{end}); got {self.window_per_halving}")


@register_method("gmp", config=GmpConfig)
class GMP(SparseMethod):
    phase = "during"
    order = 20
    pattern_refusal = "its gradual schedule passes through sparsities no N:M pattern has"
    default_criterion = "magnitude"
    criterion_needs = ("weights", "gradients", "training")
    config: GmpConfig

    def schedule(self, total_steps: int) -> CubicSchedule:
        c = self.config
        target = self.sparsity.sparsity
        return CubicSchedule.from_fractions(target, total_steps, c.start, self.window_end(), c.frequency,
                                            c.anchor, initial_sparsity=target * c.initial_fraction)

    def window_end(self) -> float:
        """--gmp_end, or the sparsity-scaled end (at most --gmp_end) with --gmp_window_per_halving."""
        c, sparsity = self.config, self.sparsity.sparsity
        if c.window_per_halving <= 0.0 or sparsity >= 1.0:
            return c.end
        return sparsity_scaled_end(sparsity, c.start, c.window_per_halving, c.end)

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
