"""`random`: uniform scores from `--seed`, the layer's position and the event's step (same on every process).

At step 0 (one-shot pruning) the stream is the one `random_before` always used, so its masks are unchanged.
"""

from __future__ import annotations

from smc_trainer.engine.criteria.base import Criterion, ScoringView, register_criterion
from smc_trainer.engine.selection import LayerScores, mix_seed, random_scores

RANDOM_INIT_STREAM = 0x52414E44  # separates these draws from SET's regrowth draws


@register_criterion("random")
class Random(Criterion):
    needs = "weights"
    order = 1

    def scores(self, view: ScoringView) -> dict[str, LayerScores]:
        out = {}
        for i, t in enumerate(view.targets):
            parts = (RANDOM_INIT_STREAM, i) if view.step == 0 else (RANDOM_INIT_STREAM, i, view.step)
            out[t.name] = random_scores(t.numel, mix_seed(self.sparsity.seed, *parts), within=view.mask_of(t.name),
                                        device=t.param.device)
        return out
