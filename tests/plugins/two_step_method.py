"""A test plugin: a method with two hyper-parameters of its own, declared in its config and nowhere else.

`two_step` prunes twice during training: to `first` x the target sparsity after `at` x the training steps, then
to the target at the last step. Its flags (`--two_step_first`, `--two_step_at`), their checks, their place in
the keys, their variant rows (`--methods two_step:first=0.25`) and its checkpointed state come from this file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from smc_trainer.engine.hyperparameters import HyperParameters
from smc_trainer.methods import register_method
from smc_trainer.methods.base import SparseMethod


@dataclass
class TwoStepConfig(HyperParameters):
    """When the first of the two pruning events falls, and how far it goes."""

    prefix = "two_step_"

    first: float = field(default=0.5, metadata={
        "help": "two_step: fraction of the target sparsity reached at the first event, in (0, 1]."})
    at: float = field(default=0.5, metadata={
        "help": "two_step: fraction of the training steps after which the first event falls, in (0, 1)."})

    def validate(self) -> None:
        super().validate()
        self.require(0.0 < self.first <= 1.0, f"{self.param('first')} must be in (0, 1]; got {self.first}")
        self.require(0.0 < self.at < 1.0, f"{self.param('at')} must be in (0, 1); got {self.at}")


@register_method("two_step", config=TwoStepConfig)
class TwoStep(SparseMethod):
    phase = "during"
    default_criterion = "magnitude"
    criterion_needs = ("weights", "gradients", "training")
    config: TwoStepConfig

    def __init__(self, config=None, sparsity=None, criterion=None):
        super().__init__(config, sparsity, criterion)
        self.events: list[int] = []  # the steps pruned at so far: checkpointed, so a resumed run knows them

    def event_steps(self, total_steps: int) -> list[int]:
        return [max(1, round(self.config.at * total_steps)), total_steps]

    def update_masks(self, ctx, step):
        first, last = self.event_steps(ctx.total_steps)
        if step not in (first, last) or step in self.events:
            return None
        self.events.append(step)
        fraction = self.config.first if step == first and first != last else 1.0
        return self.prune(ctx, 1.0 - self.sparsity.sparsity * fraction, step, within_current=True)

    def pruning_steps(self, total_steps):
        return self.event_steps(total_steps)

    def reached_target(self, ctx, step):
        return step >= ctx.total_steps

    def state_dict(self):
        return {"events": list(self.events)}

    def load_state_dict(self, state):
        self.events = [int(s) for s in state.get("events", [])]
