"""`dense`: no pruning; the baseline row and the starting point of after-training methods."""

from __future__ import annotations

from smc_trainer.methods.base import SparseMethod, register_method, require


@register_method("dense")
class Dense(SparseMethod):
    phase = "dense"
    order = 0
    pattern_refusal = "it prunes nothing"

    @classmethod
    def validate_args(cls, args) -> None:
        require(args.sparsity == 0.0, f"--sparsity {args.sparsity} has no effect with --sparse_method dense; "
                "pick a sparse method (e.g. omp_before, gmp, rigl) or use --sparsity 0")
