"""What the one-shot activation-aware methods (`wanda_*`, `sparsegpt_*`) share: flag checks, the check that every
target is a linear the calibration hooks can see, and OWL's outlier ratios per block.

The criteria themselves are pure functions in `smc_trainer.engine.oneshot`; the statistics come from the
`ctx.calibrator` the trainer provides (`smc_trainer.training.calibration`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from smc_trainer.engine.distributions import outlier_ratio
from smc_trainer.engine.oneshot import linear_view
from smc_trainer.engine.oneshot.wanda import wanda_scores
from smc_trainer.errors import UsageError
from smc_trainer.methods.base import Calibrator, SparseContext, SparseMethod, require

LINEAR_TYPE_NAMES = ("Linear", "Conv1D")


class OneShotMethod(SparseMethod):
    """Base of the calibrated one-shot methods: masks (and, for SparseGPT, weights) from calibration data."""

    pattern_refusal = None
    calibrated = True
    frozen_base_conflict = ("its calibration hooks read the inputs of plain Linear/Conv1D layers, which LoRA wraps "
                            "(not supported yet)")
    criterion = ""  # "wanda" or "sparsegpt": the name used in messages

    @classmethod
    def validate_args(cls, args) -> None:
        require(not args.prune_embeddings,
                f"--sparse_method {cls.name} scores weights by the activations a linear layer receives; embeddings "
                "are looked up, not multiplied, so they have none: pass --prune_embeddings false")
        require(args.calibration_samples >= 1,
                f"--calibration_samples must be >= 1; got {args.calibration_samples}")

    def calibrator(self, ctx: SparseContext) -> Calibrator:
        """The context's calibrator, after checking every target is a linear (before any forward pass)."""
        if ctx.calibrator is None:
            raise RuntimeError(f"{self.name} needs calibration data: run it through SparseTrainer, which provides "
                               "ctx.calibrator")
        model = getattr(ctx.calibrator, "model", None)
        if isinstance(model, nn.Module):
            for t in ctx.targets:
                module = model.get_submodule(t.name.rsplit(".", 1)[0])
                if type(module).__name__ not in LINEAR_TYPE_NAMES:
                    raise UsageError(f"--sparse_method {self.name}: {t.name} belongs to a {type(module).__name__}, "
                                     f"not a Linear or Conv1D; {self.criterion} prunes linear layers only. Leave it "
                                     "out with --prune_exclude (or --prune_embeddings false)")
        return ctx.calibrator


def layer_wanda_scores(ctx: SparseContext, norms: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Wanda scores of every target in linear layout [out, in]."""
    return {t.name: wanda_scores(linear_view(t.param, t.input_dim), norms[t.name]) for t in ctx.targets}


def owl_ratios(ctx: SparseContext, scores: Mapping[str, Tensor]) -> dict[str, float]:
    """OWL's outlier ratio per target: the share of Wanda scores above `--owl_threshold` x their layer mean,
    pooled over each block (report group: a transformer layer, the head), as the paper pools a decoder layer."""
    counts: dict[str, list[int]] = {}
    for t in ctx.targets:
        outliers, total = outlier_ratio(scores[t.name], ctx.args.owl_threshold)
        pooled = counts.setdefault(t.group, [0, 0])
        pooled[0] += outliers
        pooled[1] += total
    return {t.name: counts[t.group][0] / counts[t.group][1] for t in ctx.targets}


def as_param_layout(mask: Tensor, input_dim: int) -> Tensor:
    """A [out, in] mask back in the weight's own layout (transposed for a Conv1D)."""
    return mask if input_dim == 1 else mask.t().contiguous()


@torch.no_grad()
def write_linear(param: Tensor, input_dim: int, value: Tensor) -> None:
    """Write a [out, in] `value` into `param` (transposing for a Conv1D)."""
    linear_view(param, input_dim).copy_(value)
