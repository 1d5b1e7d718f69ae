"""`magnitude`: |w| (OMP, GMP, LTH, LRR; RigL's drop step)."""

from __future__ import annotations

from smc_trainer.engine.criteria.base import Criterion, ScoringView, register_criterion
from smc_trainer.engine.selection import LayerScores, magnitude_scores


@register_criterion("magnitude")
class Magnitude(Criterion):
    needs = "weights"
    order = 0

    def scores(self, view: ScoringView) -> dict[str, LayerScores]:
        return {t.name: magnitude_scores(t.param, view.mask_of(t.name)) for t in view.targets}
