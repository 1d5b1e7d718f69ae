"""`omp_before`: one-shot magnitude pruning of the pretrained weights, then one fine-tune ("OMP (Before)").

With `--criterion`, any score that weights, batch gradients or calibration activations give (snip, obert, wanda,
sparsegpt, ...) prunes instead.
"""

from __future__ import annotations

from smc_trainer.methods.base import SparseContext, SparseMethod, register_method


@register_method("omp_before")
class OMPBefore(SparseMethod):
    phase = "before"
    order = 10
    pattern_refusal = None
    default_criterion = "magnitude"
    criterion_needs = ("weights", "gradients", "calibration")

    def initial_masks(self, ctx: SparseContext):
        return self.prune(ctx, self.sparsity.density, step=0, within_current=False)
