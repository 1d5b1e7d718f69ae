"""`wanda_before` / `wanda_after`: Wanda (Sun et al. 2023), one-shot pruning by |W| x ||X_j||, then fine-tune.

The input norms come from `--calibration_samples` training examples in one pass over the model (before: the
pretrained model; after: the dense fine-tune). Scores are compared within each output row (`--wanda_compare
row`, the paper's choice) at each layer's budget from `--distribution` (uniform, erk or owl), or across the whole
layer, or across all layers with `--distribution global` (`--wanda_compare layer`). Under `--sparsity_pattern
N:M` the N highest scores of every M inputs are kept.
"""

from __future__ import annotations

from smc_trainer.engine.distributions import layer_counts
from smc_trainer.engine.oneshot.wanda import row_keep_masks
from smc_trainer.engine.patterns import parse_pattern
from smc_trainer.engine.selection import tensor_scores
from smc_trainer.methods.base import SparseContext, register_method, require, select_masks
from smc_trainer.methods.oneshot import OneShotMethod, as_param_layout, layer_wanda_scores, owl_ratios

WANDA_COMPARE = ("row", "layer")


class Wanda(OneShotMethod):
    criterion = "wanda"

    @classmethod
    def validate_args(cls, args) -> None:
        super().validate_args(args)
        require(args.wanda_compare in WANDA_COMPARE,
                f"--wanda_compare must be one of {', '.join(WANDA_COMPARE)}; got {args.wanda_compare!r}")
        require(not (args.wanda_compare == "row" and args.distribution == "global"
                     and parse_pattern(args.sparsity_pattern) is None),
                f"--sparse_method {cls.name} compares weights within each output row (--wanda_compare row), which "
                "needs per-layer budgets: pass --distribution uniform (the paper's), erk or owl, or compare across "
                "all layers with --wanda_compare layer")

    def initial_masks(self, ctx: SparseContext):
        calibrator = self.calibrator(ctx)
        scores = layer_wanda_scores(ctx, calibrator.input_norms(ctx.targets))
        ratios = owl_ratios(ctx, scores) if self.args.distribution == "owl" else None
        density = 1.0 - self.args.sparsity
        if self.args.wanda_compare == "layer" or parse_pattern(self.args.sparsity_pattern) is not None:
            sources = {t.name: tensor_scores(as_param_layout(scores[t.name], t.input_dim)) for t in ctx.targets}
            return select_masks(ctx, sources, density, outlier_ratios=ratios)
        counts = layer_counts(self.args.distribution, ctx.shapes(), density, outlier_ratios=ratios,
                              owl_lambda=self.args.owl_lambda)
        return {t.name: as_param_layout(row_keep_masks(scores[t.name], counts[t.name]), t.input_dim)
                for t in ctx.targets}


@register_method("wanda_before")
class WandaBefore(Wanda):
    phase = "before"
    order = 13


@register_method("wanda_after")
class WandaAfter(Wanda):
    phase = "after"
    order = 5
