"""`snip`: connection sensitivity |w * g|, g summed over `--snip_batches` training batches (Lee et al. 2019).

The score is |w * g| on every task (the original protein code used |g| alone).
"""

from __future__ import annotations

import torch

from smc_trainer.engine.criteria.base import Criterion, ScoringView, register_criterion
from smc_trainer.engine.selection import LayerScores, product_scores, tensor_scores
from smc_trainer.errors import UsageError


@register_criterion("snip")
class Snip(Criterion):
    needs = "gradients"
    order = 2

    @classmethod
    def validate_args(cls, args) -> None:
        if args.snip_batches < 1:
            raise UsageError(f"--snip_batches must be >= 1 for the snip criterion; got {args.snip_batches}")

    def scores(self, view: ScoringView) -> dict[str, LayerScores]:
        view.accumulate_gradients(self.args.snip_batches)
        scores = {}
        for t in view.targets:
            grad, within = t.param.grad, view.mask_of(t.name)
            if grad is None:  # a weight the loss does not reach has zero sensitivity
                scores[t.name] = tensor_scores(torch.zeros(t.numel, device=t.param.device), within=within)
            elif not bool(torch.isfinite(grad).all()):  # fp16: the loss scale overflowed; inf would rank first
                raise FloatingPointError(
                    f"SNIP gradients of {t.name} are not finite; under --fp16 the scaled loss overflowed on the "
                    f"--snip_batches {self.args.snip_batches} batch(es). Use --bf16, or fp32 for this run.")
            else:
                scores[t.name] = product_scores(t.param, grad, within)
        return scores
