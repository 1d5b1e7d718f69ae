"""What the activation-aware criteria (`wanda`, `sparsegpt`) share: flag checks, the calibrator of the view after
checking that every target is a linear its hooks can see, Wanda scores per layer and OWL's outlier ratios."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from smc_trainer.engine.criteria.base import Calibrator, Criterion, ScoringView
from smc_trainer.engine.distributions import outlier_ratio
from smc_trainer.engine.oneshot import linear_view
from smc_trainer.engine.oneshot.wanda import wanda_scores
from smc_trainer.engine.targets import PruneTarget, plain_named_modules
from smc_trainer.errors import UsageError

LINEAR_TYPE_NAMES = ("Linear", "Conv1D")


class ActivationCriterion(Criterion):
    """Base of the criteria scored from calibration activations: masks (and, for SparseGPT, weights) in one shot."""

    needs = "calibration"

    @classmethod
    def validate_args(cls, args: Any) -> None:
        if getattr(args, "prune_embeddings", False):
            raise UsageError(f"--criterion {cls.name} (--sparse_method {args.sparse_method}) scores weights by the "
                             "activations a linear layer receives; embeddings are looked up, not multiplied, so they "
                             "have none: pass --prune_embeddings false")
        if args.calibration_samples < 1:
            raise UsageError(f"--calibration_samples must be >= 1; got {args.calibration_samples}")

    def calibrator(self, view: ScoringView) -> Calibrator:
        """The view's calibrator, after checking every target is a linear (before any forward pass)."""
        if view.calibrator is None:
            raise RuntimeError(f"--criterion {self.name} needs calibration data: run it through SparseTrainer, which "
                               "provides the calibrator")
        if view.within and any(m is not None for m in view.within.values()):
            raise UsageError(f"--criterion {self.name} prunes in one shot; it cannot prune within an existing mask")
        model = getattr(view.calibrator, "model", None)
        if isinstance(model, nn.Module):
            modules = dict(plain_named_modules(model))  # through adapters: a LoRA layer's base layer
            for t in view.targets:
                module = modules[t.name.rsplit(".", 1)[0]]
                if type(module).__name__ not in LINEAR_TYPE_NAMES:
                    raise UsageError(f"--criterion {self.name}: {t.name} belongs to a {type(module).__name__}, not a "
                                     f"Linear or Conv1D; {self.name} prunes linear layers only. Leave it out with "
                                     "--prune_exclude (or --prune_embeddings false)")
        return view.calibrator


def layer_wanda_scores(targets: Sequence[PruneTarget], norms: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Wanda scores of every target in linear layout [out, in]."""
    return {t.name: wanda_scores(linear_view(t.param, t.input_dim), norms[t.name]) for t in targets}


def owl_ratios(targets: Sequence[PruneTarget], scores: Mapping[str, Tensor], threshold: float) -> dict[str, float]:
    """OWL's outlier ratio per target: the share of Wanda scores above `threshold` x their layer mean, pooled over
    each block (report group: a transformer layer, the head), as the paper pools a decoder layer."""
    counts: dict[str, list[int]] = {}
    for t in targets:
        outliers, total = outlier_ratio(scores[t.name], threshold)
        pooled = counts.setdefault(t.group, [0, 0])
        pooled[0] += outliers
        pooled[1] += total
    return {t.name: counts[t.group][0] / counts[t.group][1] for t in targets}
