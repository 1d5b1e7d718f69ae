"""`rigl` and `set`: dynamic sparse training with a fixed per-layer budget.

Every `--rigl_update_interval` optimizer steps until `--rigl_update_end`, each layer drops the `round(f_t *
nnz)` smallest-magnitude kept weights and regrows as many inactive positions: by the magnitude of
the dense gradient (RigL) or at random (SET). `f_t` decays from `--rigl_drop_fraction` by a cosine (to
`--rigl_drop_fraction_floor`: 0, or the official code's 0.005). Grown weights start at zero with zero
optimizer state; a weight dropped and regrown in the same update keeps its value. The initial mask
comes from `--rigl_init_method` (omp_before, random_before or snip), giving the paper's "X+RigL" rows.

The flags were named without the `rigl_` prefix before (`--init_method`, ...): those names stay deprecated
aliases, and keys and report rows keep them (`rigl:init_method=snip`), so ledgers and caches stay valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from smc_trainer.engine.criteria import Criterion
from smc_trainer.engine.hyperparameters import HyperParameters
from smc_trainer.engine.schedules import CosineDropSchedule
from smc_trainer.engine.selection import (
    LayerScores,
    magnitude_scores,
    mix_seed,
    random_scores,
    select_topk,
    tensor_scores,
)
from smc_trainer.engine.sparsity import SparsityConfig
from smc_trainer.methods.base import SparseContext, SparseMethod, register_method

INIT_METHODS = ("omp_before", "random_before", "snip")
SET_GROWTH_STREAM = 0x534554


@dataclass
class DynamicConfig(HyperParameters):
    """RigL/SET: mask updates during training and the initial mask (flags `--rigl_<field>`)."""

    prefix = "rigl_"
    former_prefix = ""  # --update_interval, --drop_fraction, ... before the prefix: deprecated aliases
    title = "RigL / SET (dynamic sparse training: drop and grow)"

    update_interval: int = field(default=100, metadata={
        "help": "RigL/SET: optimizer steps between mask updates (paper: GMP's frequency)."})
    drop_fraction: float = field(default=0.5, metadata={
        "help": "RigL/SET: initial fraction of active weights swapped per update (cosine decay)."})
    update_end: float = field(default=1.0, metadata={
        "help": "RigL/SET: fraction of training steps after which the mask is frozen."})
    drop_fraction_floor: float = field(default=0.0, metadata={
        "help": "RigL/SET: the value the cosine decay of --rigl_drop_fraction ends at (0, as RigL; the official "
                "SMC-Bench code: 0.005)."})
    init_method: str = field(default="omp_before", metadata={
        "choices": INIT_METHODS,
        "help": "RigL/SET: method giving the initial mask: omp_before, random_before or snip."})

    def validate(self) -> None:
        super().validate()
        self.require(self.update_interval >= 1, f"{self.param('update_interval')} must be >= 1; "
                     f"got {self.update_interval}")
        self.require(0.0 < self.drop_fraction < 1.0, f"{self.param('drop_fraction')} must be in (0, 1); "
                     f"got {self.drop_fraction}")
        self.require(0.0 < self.update_end <= 1.0, f"{self.param('update_end')} must be in (0, 1]; "
                     f"got {self.update_end}")
        self.require(0.0 <= self.drop_fraction_floor <= self.drop_fraction,
                     f"{self.param('drop_fraction_floor')} must be in [0, {self.param('drop_fraction')} "
                     f"{self.drop_fraction}]; got {self.drop_fraction_floor}")


@register_method("rigl", config=DynamicConfig)
class RigL(SparseMethod):
    phase = "dynamic"
    order = 30
    pattern_refusal = "drop-and-grow moves weights between groups of M"
    default_criterion = "magnitude"  # the drop step; the initial mask's score is --rigl_init_method's
    accepts_criterion = False
    frozen_base_conflict = ("RigL/SET grow pruned weights back from zero and train them; in a frozen base a grown "
                            "weight gets no gradient (RigL's growth score) and stays zero (use gmp)")

    config: DynamicConfig

    def __init__(self, config: DynamicConfig | None = None, sparsity: SparsityConfig | None = None,
                 criterion: Criterion | None = None, init: SparseMethod | None = None):
        super().__init__(config, sparsity, criterion)
        from smc_trainer.methods import get_method_class

        self.init = init if init is not None else get_method_class(self.config.init_method)(sparsity=self.sparsity)
        """The method of the initial mask (--rigl_init_method: omp_before, random_before, snip)."""
        self._grad_scores: dict[str, Tensor] | None = None

    @classmethod
    def from_args(cls, args: Any) -> RigL:
        """RigL/SET from the flags; the initial mask's method is built from them too (SNIP's batches, ...)."""
        from smc_trainer.methods import get_method_class

        method = super().from_args(args)
        method.init = get_method_class(method.config.init_method).from_args(args)
        return method

    @classmethod
    def validate_args(cls, args) -> None:
        """The initial mask's method checks the flags it reads too: its config, its own checks and its criterion's
        (SNIP's batches)."""
        from smc_trainer.methods import get_method_class

        init = get_method_class(args.rigl_init_method)
        init.validate_config(args)
        init.validate_args(args)
        init.validate_criterion(args)

    def schedule(self, total_steps: int) -> CosineDropSchedule:
        c = self.config
        return CosineDropSchedule.from_fractions(c.drop_fraction, c.update_interval, total_steps, c.update_end,
                                                 c.drop_fraction_floor)

    def initial_masks(self, ctx: SparseContext):
        return self.init.initial_masks(ctx)

    # ---- growth criterion ----------------------------------------------------------------------

    def wants_dense_gradients(self, ctx: SparseContext, step: int) -> bool:
        return self.schedule(ctx.total_steps).is_update(step)

    @torch.no_grad()
    def observe_dense_gradients(self, ctx: SparseContext, step: int) -> None:
        self._grad_scores = {
            t.name: torch.zeros_like(t.param, dtype=torch.float32) if t.param.grad is None
            else t.param.grad.detach().abs().float()
            for t in ctx.targets
        }

    def discard_dense_gradients(self) -> None:
        self._grad_scores = None

    def grow_scores(self, ctx: SparseContext, index: int, step: int, within: Tensor) -> LayerScores:
        name = ctx.targets[index].name
        if self._grad_scores is None:
            raise RuntimeError("RigL update without dense gradients: the trainer did not call observe_dense_gradients")
        return tensor_scores(self._grad_scores[name], within=within)

    # ---- the update ----------------------------------------------------------------------------

    @torch.no_grad()
    def update_masks(self, ctx: SparseContext, step: int):
        schedule = self.schedule(ctx.total_steps)
        if not schedule.is_update(step) or not ctx.masks.active:
            self._grad_scores = None
            return None
        fraction = schedule.fraction_at(step)
        new = {}
        for i, t in enumerate(ctx.targets):
            mask = ctx.current_mask(t.name).reshape(-1)
            n_active = int(torch.count_nonzero(mask))
            n_swap = round(fraction * n_active)
            if n_swap == 0 or n_active == t.numel:
                new[t.name] = mask.view(t.param.shape)
                continue
            survivors = select_topk({t.name: magnitude_scores(t.param, mask)}, n_active - n_swap)[t.name]
            grown = select_topk({t.name: self.grow_scores(ctx, i, step, ~survivors)}, n_swap)[t.name]
            new[t.name] = (survivors | grown).view(t.param.shape)
        self._grad_scores = None
        return new


@register_method("set", config=DynamicConfig)
class SET(RigL):
    """SET (Mocanu et al. 2018): like RigL, but regrowth is uniformly random instead of by gradient."""

    order = 31

    def wants_dense_gradients(self, ctx: SparseContext, step: int) -> bool:
        return False

    def grow_scores(self, ctx: SparseContext, index: int, step: int, within: Tensor) -> LayerScores:
        t = ctx.targets[index]
        seed = mix_seed(self.sparsity.seed, SET_GROWTH_STREAM, step, index)
        return random_scores(t.numel, seed, within=within, device=t.param.device)
