"""`snip`: prune by connection sensitivity |w * g| before fine-tuning ("SNIP (Before)").

Gradients are summed over `--snip_batches` training batches on the model itself (no deep copy),
and those batches are not consumed from the training stream (the original skipped two batches).
The score is |w * g| on every task (the original protein code used |g| alone).
"""

from __future__ import annotations

import torch

from smc_trainer.engine.selection import LayerScores, product_scores, tensor_scores
from smc_trainer.methods.base import SparseContext, SparseMethod, register_method, require, select_masks


def snip_scores(ctx: SparseContext) -> dict[str, LayerScores]:
    """|w * g| per prunable weight from gradients summed over `--snip_batches` batches."""
    ctx.accumulate_gradients(ctx.args.snip_batches)
    scores = {}
    for t in ctx.targets:
        grad = t.param.grad
        if grad is None:  # a weight the loss does not reach has zero sensitivity
            scores[t.name] = tensor_scores(torch.zeros(t.numel, device=t.param.device))
        elif not bool(torch.isfinite(grad).all()):  # fp16: the loss scale overflowed; inf would rank first
            raise FloatingPointError(
                f"SNIP gradients of {t.name} are not finite; under --fp16 the scaled loss overflowed on the "
                f"--snip_batches {ctx.args.snip_batches} batch(es). Use --bf16, or fp32 for this run.")
        else:
            scores[t.name] = product_scores(t.param, grad)
    return scores


@register_method("snip")
class SNIP(SparseMethod):
    phase = "before"
    order = 12
    pattern_refusal = None

    @classmethod
    def validate_args(cls, args) -> None:
        require(args.snip_batches >= 1, f"--snip_batches must be >= 1 for snip; got {args.snip_batches}")

    def initial_masks(self, ctx: SparseContext):
        return select_masks(ctx, snip_scores(ctx), 1.0 - self.args.sparsity)
