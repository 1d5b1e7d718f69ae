"""`sparsegpt`: SparseGPT (Frantar & Alistarh 2023), OBS on each layer's Hessian X X^T that chooses the mask and
updates the remaining weights so W X changes least.

Blocks (transformer layers, then the head) are pruned in forward order, each calibrated on the outputs of the
blocks already pruned before it (`smc_trainer.training.calibration`). Each layer keeps its budget from
`--distribution` (uniform, erk or owl: SparseGPT prunes layer by layer, so one global threshold has no meaning),
or N of every M under `--sparsity_pattern N:M`. `--sparsegpt_blocksize` and `--sparsegpt_dampening` are the
paper's lazy-update block (128) and Hessian dampening (1% of the mean diagonal). The mask is chosen inside the
column loop, so this criterion has no standalone scores: it overrides `select`.
"""

from __future__ import annotations

from torch import Tensor

from smc_trainer.engine.criteria.activation import ActivationCriterion, layer_wanda_scores, owl_ratios
from smc_trainer.engine.criteria.base import ScoringView, Selector, register_criterion
from smc_trainer.engine.distributions import layer_counts
from smc_trainer.engine.oneshot import as_param_layout, linear_view, write_linear
from smc_trainer.engine.oneshot.sparsegpt import sparsegpt_prune_group
from smc_trainer.engine.patterns import parse_pattern
from smc_trainer.engine.selection import LayerScores
from smc_trainer.engine.targets import PruneTarget
from smc_trainer.errors import UsageError


@register_criterion("sparsegpt")
class SparseGPT(ActivationCriterion):
    order = 7

    @classmethod
    def validate_args(cls, args) -> None:
        super().validate_args(args)
        if args.distribution == "global" and parse_pattern(args.sparsity_pattern) is None:
            raise UsageError("--criterion sparsegpt prunes layer by layer, so each layer needs its own budget: pass "
                             "--distribution uniform (the paper's), erk or owl")
        if args.sparsegpt_blocksize < 1:
            raise UsageError(f"--sparsegpt_blocksize must be >= 1; got {args.sparsegpt_blocksize}")
        if not args.sparsegpt_dampening > 0:
            raise UsageError(f"--sparsegpt_dampening must be > 0; got {args.sparsegpt_dampening}")

    def scores(self, view: ScoringView) -> dict[str, LayerScores]:
        raise UsageError("--criterion sparsegpt chooses each layer's mask inside its OBS column loop; it has no "
                         "standalone scores")

    def select(self, view: ScoringView, density: float, select: Selector) -> dict[str, Tensor]:
        args = self.args
        calibrator = self.calibrator(view)
        pattern = parse_pattern(args.sparsity_pattern)
        counts = None
        if pattern is None:
            ratios = None
            if args.distribution == "owl":  # OWL reads the dense model's outliers before anything is pruned
                scores = layer_wanda_scores(view.targets, calibrator.input_norms(view.targets))
                ratios = owl_ratios(view.targets, scores, args.owl_threshold)
            shapes = {t.name: tuple(t.param.shape) for t in view.targets}
            counts = layer_counts(args.distribution, shapes, density, outlier_ratios=ratios,
                                  owl_lambda=args.owl_lambda)
        blocksize = args.sparsegpt_blocksize
        if pattern is not None:  # groups of M must not straddle two blocks
            blocksize = max(pattern.m, blocksize // pattern.m * pattern.m)
        masks: dict[str, Tensor] = {}

        def prune(group: list[PruneTarget], hessian: Tensor) -> None:
            weights = [linear_view(t.param, t.input_dim) for t in group]
            keeps = [None if counts is None else counts[t.name] for t in group]
            results = sparsegpt_prune_group(weights, hessian, keeps, pattern=pattern, blocksize=blocksize,
                                            dampening=args.sparsegpt_dampening)
            for target, (new, keep) in zip(group, results, strict=True):
                write_linear(target.param, target.input_dim, new)
                masks[target.name] = as_param_layout(keep, target.input_dim)

        calibrator.sequential(view.targets, prune, memory=args.calibration_memory)
        return masks
