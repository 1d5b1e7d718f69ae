"""`movement`: hard movement pruning (Sanh et al. 2020): S = -sum_t w_t * g_t over optimizer steps.

Weights moving away from zero (w and its gradient of opposite signs) gain score; the method (`gmp`)
keeps the top scores at each pruning event of its schedule. `w_t` is the weight the step's gradient
was taken at, `g_t` that step's dense gradient (before masking and clipping). The scores are one
float32 tensor per prunable weight (N floats), kept in every checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from smc_trainer.engine.criteria.base import Criterion, ScoringView, register_criterion
from smc_trainer.engine.selection import LayerScores, tensor_scores
from smc_trainer.engine.targets import PruneTarget
from smc_trainer.errors import UsageError


@register_criterion("movement")
class Movement(Criterion):
    needs = "training"
    order = 3

    def __init__(self, config=None, sparsity=None):
        super().__init__(config, sparsity)
        self.accumulated: dict[str, Tensor] = {}

    @classmethod
    def validate_args(cls, args) -> None:
        if getattr(args, "fp16", False):
            raise UsageError("--criterion movement sums w * g over steps, and --fp16 gradients carry a loss scale "
                             "that changes between steps; use --bf16 or fp32")

    @torch.no_grad()
    def observe_step(self, targets: list[PruneTarget], step: int) -> None:
        for t in targets:
            if t.param.grad is None:
                continue
            acc = self.accumulated.get(t.name)
            if acc is None:
                acc = self.accumulated[t.name] = torch.zeros_like(t.param, dtype=torch.float32)
            acc.sub_(t.param.detach().float() * t.param.grad.detach().float())

    def scores(self, view: ScoringView) -> dict[str, LayerScores]:
        return {t.name: tensor_scores(self.accumulated.get(t.name, torch.zeros_like(t.param, dtype=torch.float32)),
                                      within=view.mask_of(t.name))
                for t in view.targets}

    def tensor_state(self) -> dict[str, Tensor]:
        return dict(self.accumulated)

    def load_tensor_state(self, state: Mapping[str, Tensor]) -> None:
        self.accumulated = {name: value.clone() for name, value in state.items()}
