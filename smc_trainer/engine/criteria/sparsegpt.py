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

from dataclasses import dataclass, field

from torch import Tensor

from smc_trainer.engine.criteria.activation import ActivationCriterion, layer_wanda_scores, owl_ratios
from smc_trainer.engine.criteria.base import CALIBRATION_MEMORY, ScoringView, Selector, register_criterion
from smc_trainer.engine.distributions import layer_counts
from smc_trainer.engine.hyperparameters import HyperParameters
from smc_trainer.engine.oneshot import as_param_layout, linear_view, write_linear
from smc_trainer.engine.oneshot.sparsegpt import sparsegpt_prune_group
from smc_trainer.engine.patterns import parse_pattern
from smc_trainer.engine.selection import LayerScores
from smc_trainer.engine.targets import PruneTarget
from smc_trainer.errors import UsageError


@dataclass
class SparseGptConfig(HyperParameters):
    """SparseGPT's knobs: the lazy-update block, the Hessian dampening, and how many Hessians are held at once."""

    title = "SparseGPT criterion (--criterion sparsegpt)"

    prefix = "sparsegpt_"

    blocksize: int = field(default=128, metadata={"help": "SparseGPT: columns per lazy-update block (paper: 128)."})
    dampening: float = field(default=0.01, metadata={
        "help": "SparseGPT: Hessian dampening, a fraction of its mean diagonal (paper: 0.01)."})
    memory: str = field(default="block", metadata={
        "flag": "calibration_memory", "choices": CALIBRATION_MEMORY, "key": "never", "dense_reset": True,
        "help": "SparseGPT: block (default) collects one block's (transformer layer's) Hessians per forward pass, so "
                "memory holds that block's Hessians; layer collects one Hessian per pass (q, k, v share one), holding "
                "only one at a time at the cost of one pass per layer group instead of one per block. Masks and "
                "weights are identical."})

    def validate(self) -> None:
        super().validate()
        self.require(self.blocksize >= 1, f"{self.param('blocksize')} must be >= 1; got {self.blocksize}")
        self.require(self.dampening > 0, f"{self.param('dampening')} must be > 0; got {self.dampening}")


@register_criterion("sparsegpt", config=SparseGptConfig)
class SparseGPT(ActivationCriterion):
    order = 7
    config: SparseGptConfig

    @classmethod
    def validate_args(cls, args) -> None:
        super().validate_args(args)
        if args.distribution == "global" and parse_pattern(args.sparsity_pattern) is None:
            raise UsageError("--criterion sparsegpt prunes layer by layer, so each layer needs its own budget: pass "
                             "--distribution uniform (the paper's), erk or owl")

    def scores(self, view: ScoringView) -> dict[str, LayerScores]:
        raise UsageError("--criterion sparsegpt chooses each layer's mask inside its OBS column loop; it has no "
                         "standalone scores")

    def select(self, view: ScoringView, density: float, select: Selector) -> dict[str, Tensor]:
        s, c = self.sparsity, self.config
        calibrator = self.calibrator(view)
        pattern = s.nm
        counts = None
        if pattern is None:
            ratios = None
            if s.distribution == "owl":  # OWL reads the dense model's outliers before anything is pruned
                scores = layer_wanda_scores(view.targets, calibrator.input_norms(view.targets))
                ratios = owl_ratios(view.targets, scores, s.owl_threshold)
            shapes = {t.name: tuple(t.param.shape) for t in view.targets}
            counts = layer_counts(s.distribution, shapes, density, outlier_ratios=ratios, owl_lambda=s.owl_lambda)
        blocksize = c.blocksize
        if pattern is not None:  # groups of M must not straddle two blocks
            blocksize = max(pattern.m, blocksize // pattern.m * pattern.m)
        masks: dict[str, Tensor] = {}

        def prune(group: list[PruneTarget], hessian: Tensor) -> None:
            weights = [linear_view(t.param, t.input_dim) for t in group]
            keeps = [None if counts is None else counts[t.name] for t in group]
            results = sparsegpt_prune_group(weights, hessian, keeps, pattern=pattern, blocksize=blocksize,
                                            dampening=c.dampening)
            for target, (new, keep) in zip(group, results, strict=True):
                write_linear(target.param, target.input_dim, new)
                masks[target.name] = as_param_layout(keep, target.input_dim)

        calibrator.sequential(view.targets, prune, memory=c.memory)
        return masks
