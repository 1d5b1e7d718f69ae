"""`snip`: connection sensitivity |w * g|, g summed over `--snip_batches` training batches (Lee et al. 2019).

The score is |w * g| on every task (the original protein code used |g| alone).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from smc_trainer.engine.criteria.base import Criterion, ScoringView, register_criterion
from smc_trainer.engine.hyperparameters import HyperParameters
from smc_trainer.engine.selection import LayerScores, product_scores, tensor_scores


@dataclass
class SnipConfig(HyperParameters):
    """SNIP's one knob: how many training batches' gradients are summed into |w * g|."""

    title = "SNIP (--sparse_method snip, a SNIP initial mask)"

    prefix = "snip_"

    batches: int = field(default=1, metadata={"help": "SNIP: training batches whose gradients are summed."})

    def validate(self) -> None:
        super().validate()
        self.require(self.batches >= 1, f"{self.param('batches')} must be >= 1 for the snip criterion; got "
                     f"{self.batches}")


@register_criterion("snip", config=SnipConfig)
class Snip(Criterion):
    needs = "gradients"
    order = 2
    config: SnipConfig

    def scores(self, view: ScoringView) -> dict[str, LayerScores]:
        view.accumulate_gradients(self.config.batches)
        scores = {}
        for t in view.targets:
            grad, within = t.param.grad, view.mask_of(t.name)
            if grad is None:  # a weight the loss does not reach has zero sensitivity
                scores[t.name] = tensor_scores(torch.zeros(t.numel, device=t.param.device), within=within)
            elif not bool(torch.isfinite(grad).all()):  # fp16: the loss scale overflowed; inf would rank first
                raise FloatingPointError(
                    f"SNIP gradients of {t.name} are not finite; under --fp16 the scaled loss overflowed on the "
                    f"{self.config.param('batches')} {self.config.batches} batch(es). Use --bf16, or fp32 for this "
                    "run.")
            else:
                scores[t.name] = product_scores(t.param, grad, within)
        return scores
