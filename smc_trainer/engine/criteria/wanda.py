"""`wanda`: |W_ij| x ||X_j||_2 (Sun et al. 2023), the weight's magnitude times the norm of its input feature over
the calibration tokens, collected in one pass over the model being pruned (before: the pretrained model; after:
the dense fine-tune).

Scores are compared within each output row (`--wanda_compare row`, the paper's choice) at each layer's budget from
`--distribution` (uniform, erk or owl), or across the whole layer, or across all layers with `--distribution
global` (`--wanda_compare layer`). Under `--sparsity_pattern N:M` the N highest scores of every M inputs are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from smc_trainer.engine.criteria.activation import ActivationCriterion, layer_wanda_scores, owl_ratios
from smc_trainer.engine.criteria.base import ScoringView, Selector, register_criterion
from smc_trainer.engine.distributions import layer_counts
from smc_trainer.engine.hyperparameters import HyperParameters
from smc_trainer.engine.oneshot import as_param_layout
from smc_trainer.engine.oneshot.wanda import row_keep_masks
from smc_trainer.engine.patterns import parse_pattern
from smc_trainer.engine.selection import LayerScores, tensor_scores
from smc_trainer.errors import UsageError

WANDA_COMPARE = ("row", "layer")


@dataclass
class WandaConfig(HyperParameters):
    """Wanda's one knob: which weights a score competes with."""

    title = "Wanda criterion (--criterion wanda)"

    compare: str = field(default="row", metadata={
        "flag": "wanda_compare", "choices": WANDA_COMPARE,
        "help": "Wanda: compare scores within each output row (row, the paper's) at each layer's --distribution "
                "budget, or across the whole layer / all layers with --distribution global (layer)."})


@register_criterion("wanda", config=WandaConfig)
class Wanda(ActivationCriterion):
    order = 6
    config: WandaConfig

    @classmethod
    def validate_args(cls, args) -> None:
        super().validate_args(args)
        if (args.wanda_compare == "row" and args.distribution == "global"
                and parse_pattern(args.sparsity_pattern) is None):
            raise UsageError("--criterion wanda compares weights within each output row (--wanda_compare row), which "
                             "needs per-layer budgets: pass --distribution uniform (the paper's), erk or owl, or "
                             "compare across all layers with --wanda_compare layer")

    def layer_scores(self, view: ScoringView) -> dict[str, Tensor]:
        """Wanda scores of every target, [out, in], from one calibration pass."""
        calibrator = self.calibrator(view)
        return layer_wanda_scores(view.targets, calibrator.input_norms(view.targets))

    def scores(self, view: ScoringView) -> dict[str, LayerScores]:
        scores = self.layer_scores(view)
        return {t.name: tensor_scores(as_param_layout(scores[t.name], t.input_dim)) for t in view.targets}

    def select(self, view: ScoringView, density: float, select: Selector) -> dict[str, Tensor]:
        s = self.sparsity
        scores = self.layer_scores(view)
        ratios = owl_ratios(view.targets, scores, s.owl_threshold) if s.distribution == "owl" else None
        if self.config.compare == "layer" or s.nm is not None:
            return select({t.name: tensor_scores(as_param_layout(scores[t.name], t.input_dim))
                           for t in view.targets}, ratios)
        shapes = {t.name: tuple(t.param.shape) for t in view.targets}
        counts = layer_counts(s.distribution, shapes, density, outlier_ratios=ratios, owl_lambda=s.owl_lambda)
        return {t.name: as_param_layout(row_keep_masks(scores[t.name], counts[t.name]), t.input_dim)
                for t in view.targets}
