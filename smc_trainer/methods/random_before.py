"""`random_before`: random pruning before fine-tuning ("Random (Before)"), with exact counts.

The original drew a Bernoulli mask per layer, so its sparsity was only approximately the target;
here random scores go through the same exact selection as every other criterion. Scores come from
`--seed` and the layer's position, so every process draws the same mask.
"""

from __future__ import annotations

from smc_trainer.engine.selection import mix_seed, random_scores
from smc_trainer.methods.base import SparseContext, SparseMethod, register_method, select_masks

RANDOM_INIT_STREAM = 0x52414E44  # separates these draws from SET's regrowth draws


@register_method("random_before")
class RandomBefore(SparseMethod):
    phase = "before"
    order = 11
    pattern_refusal = None

    def initial_masks(self, ctx: SparseContext):
        scores = {
            t.name: random_scores(t.numel, mix_seed(self.args.seed, RANDOM_INIT_STREAM, i), device=t.param.device)
            for i, t in enumerate(ctx.targets)
        }
        return select_masks(ctx, scores, 1.0 - self.args.sparsity)
