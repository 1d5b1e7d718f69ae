"""`omp_before`: one-shot magnitude pruning of the pretrained weights, then one fine-tune ("OMP (Before)")."""

from __future__ import annotations

from smc_trainer.methods.base import SparseContext, SparseMethod, magnitude_sources, register_method, select_masks


@register_method("omp_before")
class OMPBefore(SparseMethod):
    phase = "before"
    order = 10
    pattern_refusal = None

    def initial_masks(self, ctx: SparseContext):
        return select_masks(ctx, magnitude_sources(ctx), 1.0 - self.args.sparsity)
