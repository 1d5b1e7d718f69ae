"""`sparsegpt_before` / `sparsegpt_after`: SparseGPT (Frantar & Alistarh 2023), one-shot OBS pruning that also
updates the remaining weights, then fine-tune.

Blocks (transformer layers, then the head) are pruned in forward order, each calibrated on the outputs of the
blocks already pruned before it (`smc_trainer.training.calibration`). Each layer keeps its budget from
`--distribution` (uniform, erk or owl: SparseGPT prunes layer by layer, so one global threshold has no meaning),
or N of every M under `--sparsity_pattern N:M`. `--sparsegpt_blocksize` and `--sparsegpt_dampening` are the
paper's lazy-update block (128) and Hessian dampening (1% of the mean diagonal).
"""

from __future__ import annotations

from torch import Tensor

from smc_trainer.engine.distributions import layer_counts
from smc_trainer.engine.oneshot import linear_view
from smc_trainer.engine.oneshot.sparsegpt import sparsegpt_prune
from smc_trainer.engine.patterns import parse_pattern
from smc_trainer.engine.targets import PruneTarget
from smc_trainer.methods.base import SparseContext, register_method, require
from smc_trainer.methods.oneshot import OneShotMethod, as_param_layout, layer_wanda_scores, owl_ratios, write_linear


class SparseGPT(OneShotMethod):
    criterion = "sparsegpt"

    @classmethod
    def validate_args(cls, args) -> None:
        super().validate_args(args)
        require(args.distribution != "global" or parse_pattern(args.sparsity_pattern) is not None,
                f"--sparse_method {cls.name} prunes layer by layer, so each layer needs its own budget: pass "
                "--distribution uniform (the paper's), erk or owl")
        require(args.sparsegpt_blocksize >= 1, f"--sparsegpt_blocksize must be >= 1; got {args.sparsegpt_blocksize}")
        require(args.sparsegpt_dampening > 0, f"--sparsegpt_dampening must be > 0; got {args.sparsegpt_dampening}")

    def initial_masks(self, ctx: SparseContext):
        calibrator = self.calibrator(ctx)
        pattern = parse_pattern(self.args.sparsity_pattern)
        counts = None
        if pattern is None:
            ratios = None
            if self.args.distribution == "owl":  # OWL reads the dense model's outliers before anything is pruned
                ratios = owl_ratios(ctx, layer_wanda_scores(ctx, calibrator.input_norms(ctx.targets)))
            counts = layer_counts(self.args.distribution, ctx.shapes(), 1.0 - self.args.sparsity,
                                  outlier_ratios=ratios, owl_lambda=self.args.owl_lambda)
        blocksize = self.args.sparsegpt_blocksize
        if pattern is not None:  # groups of M must not straddle two blocks
            blocksize = max(pattern.m, blocksize // pattern.m * pattern.m)
        masks: dict[str, Tensor] = {}

        def prune(target: PruneTarget, hessian: Tensor) -> None:
            weight = linear_view(target.param, target.input_dim)
            new, keep = sparsegpt_prune(weight, hessian, keep=None if counts is None else counts[target.name],
                                        pattern=pattern, blocksize=blocksize,
                                        dampening=self.args.sparsegpt_dampening)
            write_linear(target.param, target.input_dim, new)
            masks[target.name] = as_param_layout(keep, target.input_dim)

        calibrator.sequential(ctx.targets, prune)
        return masks


@register_method("sparsegpt_before")
class SparseGPTBefore(SparseGPT):
    phase = "before"
    order = 14


@register_method("sparsegpt_after")
class SparseGPTAfter(SparseGPT):
    phase = "after"
    order = 6
