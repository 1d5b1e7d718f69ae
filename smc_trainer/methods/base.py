"""The method interface: a few small hooks, no Trainer internals.

A method sees the run through a `SparseContext` (targets, current masks, the shared sparsity settings, step
budget and a way to get gradients from training batches); its own hyper-parameters are `self.config`. It returns
new masks; the MaskSet installs them (zeroing weights and optimizer state) and the callback decides when each hook
runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from smc_trainer.engine.criteria import Criterion, ScoringView, criterion_names, get_criterion_class
from smc_trainer.engine.criteria.base import Calibrator, no_gradient_batches
from smc_trainer.engine.distributions import layer_counts
from smc_trainer.engine.hyperparameters import HyperParameters, NoHyperParameters, checked_config
from smc_trainer.engine.masks import MaskSet
from smc_trainer.engine.patterns import NMPattern, nm_floor_masks, nm_keep_mask
from smc_trainer.engine.selection import LayerScores, keep_count, magnitude_scores, select_topk
from smc_trainer.engine.sparsity import SparsityConfig
from smc_trainer.engine.targets import PruneTarget
from smc_trainer.errors import UsageError
from smc_trainer.registry import Registry

if TYPE_CHECKING:
    from smc_trainer.training.arguments import SparseTrainingArguments

METHODS: Registry[type[SparseMethod]] = Registry("sparse method", "--sparse_method", [os.path.dirname(__file__)],
                                                 "smc_trainer.methods")


def register_method(name: str, config: type[HyperParameters] | None = None
                    ) -> Callable[[type[SparseMethod]], type[SparseMethod]]:
    """Class decorator: make a method available as `--sparse_method name`, with its own hyper-parameters
    (`config`, a `HyperParameters` dataclass whose fields become flags)."""
    return METHODS.register(name, config)


@dataclass
class SparseContext:
    """What a method may look at: the prunable weights, their masks, the shared sparsity settings and the step
    budget."""

    targets: list[PruneTarget]
    masks: MaskSet
    sparsity: SparsityConfig
    total_steps: int
    accumulate_gradients: Callable[[int], None]
    """Run `n` training batches forward and backward; leaves the summed dense gradients in `.grad`."""
    calibrator: Calibrator | None = None
    """Calibration statistics for one-shot criteria (Wanda, SparseGPT); None where no data is at hand."""
    gradient_batches: Callable[[int | None], Iterator[None]] = no_gradient_batches
    """Run `n` training batches (None: one pass) one at a time, yielding with each batch's gradients in `.grad`."""
    count_batches_per_pass: Callable[[], int] | None = None
    """How many batches one pass over the training data has; asked only by criteria that need it (building the
    training dataloader early would run its column checks before the method's own checks)."""

    def scoring_view(self, step: int, within_current: bool) -> ScoringView:
        """What a criterion sees at a pruning event after optimizer step `step` (0: before training)."""
        within = dict(self.masks.masks) if within_current and self.masks.active else {}
        return ScoringView(self.targets, within, step, self.gradient_batches, self.accumulate_gradients,
                           self.count_batches_per_pass, self.calibrator)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {t.name: tuple(t.param.shape) for t in self.targets}

    def current_mask(self, name: str) -> Tensor | None:
        return self.masks.masks.get(name)


class SparseMethod:
    """Base class. Override the hooks a method needs; the defaults do nothing (dense)."""

    name: ClassVar[str] = ""
    phase: ClassVar[str] = "dense"  # dense | before | during | after | iterative | dynamic
    order: ClassVar[int] = 50  # position in `method_names()` (help texts, tables)
    pattern_refusal: ClassVar[str | None] = "it has no N:M selection"
    """Why the method cannot keep `--sparsity_pattern N:M`; None for methods that can (one-shot masks)."""
    default_criterion: ClassVar[str | None] = None  # the score used without --criterion (None: no scoring)
    criterion_needs: ClassVar[tuple[str, ...]] = ("weights", "gradients")
    """What this method can feed a criterion (`smc_trainer.engine.criteria.base`: weights, gradients, training,
    calibration)."""
    accepts_criterion: ClassVar[bool] = True  # False: --criterion is refused (the method's score is fixed)
    frozen_base_conflict: ClassVar[str | None] = None
    """Why the method needs to train the weights it prunes, so it is refused with `--peft lora` (None: it works
    on a frozen base, the adapters and head doing the training)."""

    config_class: ClassVar[type[HyperParameters]] = NoHyperParameters
    """The method's own hyper-parameters (`register_method(name, config=...)`); `self.config` holds their values."""

    def __init__(self, config: HyperParameters | None = None, sparsity: SparsityConfig | None = None,
                 criterion: Criterion | None = None):
        """A method from its own config (None: the defaults), the shared sparsity settings and its criterion (None:
        the method's own, `default_criterion`, with its defaults). From training arguments: `from_args(args)`."""
        self.config = checked_config(type(self), config)
        self.sparsity = sparsity if sparsity is not None else SparsityConfig()
        if criterion is None and self.default_criterion is not None:
            criterion = get_criterion_class(self.default_criterion)(sparsity=self.sparsity)
        self.criterion: Criterion | None = criterion

    @classmethod
    def from_args(cls, args: SparseTrainingArguments | Any) -> SparseMethod:
        """The method the flags configure: its config, the shared sparsity settings, its criterion (--criterion or
        the method's own) with the criterion's config."""
        sparsity = SparsityConfig.from_flags(args)
        name = cls.criterion_name(args)
        criterion = None if name is None else get_criterion_class(name).from_args(args, sparsity)
        return cls(cls.config_class.from_flags(args), sparsity, criterion)

    @classmethod
    def validate_args(cls, args: SparseTrainingArguments) -> None:
        """Raise ValueError for flags this method cannot run with (called before any work starts)."""

    @classmethod
    def validate_config(cls, args: Any) -> None:
        """Check the method's own hyper-parameters, read from the flags (errors name the flags)."""
        cls.config_class.from_flags(args).validate()

    @classmethod
    def lora_refusal(cls, args: Any) -> str | None:
        """Why this run cannot train a frozen base (`--peft lora`, or a PeftModel): the method's own
        `frozen_base_conflict`, else its criterion's; None when it can. Names the flag at fault."""
        if cls.frozen_base_conflict:
            return f"--sparse_method {cls.name} cannot run with --peft lora: {cls.frozen_base_conflict}"
        criterion = cls.criterion_name(args)
        conflict = get_criterion_class(criterion).frozen_base_conflict if criterion else None
        if conflict:
            return f"--criterion {criterion} (--sparse_method {cls.name}) cannot run with --peft lora: {conflict}"
        return None

    @classmethod
    def criterion_name(cls, args: Any) -> str | None:
        """The score this method uses: --criterion, else the method's own (omp_* magnitude, snip snip, ...)."""
        return getattr(args, "criterion", None) or cls.default_criterion

    @classmethod
    def validate_criterion(cls, args: Any) -> None:
        """Refuse a --criterion this method cannot feed (e.g. movement needs training steps between events)."""
        given = getattr(args, "criterion", None)
        if given is not None and (cls.default_criterion is None or not cls.accepts_criterion) \
                and given != cls.default_criterion:
            raise UsageError(f"--criterion {given} has no effect with --sparse_method {cls.name}, whose score is "
                             "fixed; leave --criterion unset")
        name = cls.criterion_name(args)
        if name is None:
            return
        criterion = get_criterion_class(name)
        if criterion.needs not in cls.criterion_needs:
            fits = [c for c in criterion_names() if get_criterion_class(c).needs in cls.criterion_needs]
            other = _NEEDS_METHODS[criterion.needs]
            raise UsageError(f"--criterion {name} needs {_NEEDS_TEXT[criterion.needs]}, which --sparse_method "
                             f"{cls.name} ({cls.phase}) never has; with {cls.name} use one of {', '.join(fits)}, "
                             f"or {other}")
        criterion.config_class.from_flags(args).validate()
        criterion.validate_args(args)

    @classmethod
    def calibrated(cls, args: Any) -> bool:
        """Whether this run reads activations of calibration data (its criterion needs them): allows OWL."""
        name = cls.criterion_name(args)
        return name is not None and get_criterion_class(name).needs == "calibration"

    @classmethod
    def prunes_in_trainer(cls, args: Any) -> bool:
        """Iterative methods: whether a round's mask is chosen inside the trainer, within the previous round's."""
        return False

    def prune(self, ctx: SparseContext, density: float, step: int, within_current: bool) -> dict[str, Tensor]:
        """Masks at `density` by this method's criterion (then the criterion's after-selection update, e.g. OBS)."""
        if self.criterion is None:
            raise RuntimeError(f"--sparse_method {self.name} has no criterion to prune with")
        view = ctx.scoring_view(step, within_current)
        masks = self.criterion.select(
            view, density, lambda scores, ratios: select_masks(ctx, scores, density, outlier_ratios=ratios))
        self.criterion.after_selection(view, masks)
        return masks

    def initial_masks(self, ctx: SparseContext) -> Mapping[str, Tensor] | None:
        """Masks to install when training begins (not on resume); None keeps the model dense."""
        return None

    def wants_dense_gradients(self, ctx: SparseContext, step: int) -> bool:
        """True if `observe_dense_gradients` must see the unmasked gradients of optimizer step `step`."""
        return False

    def observe_dense_gradients(self, ctx: SparseContext, step: int) -> None:
        """Read the dense gradients of step `step` (before they are masked and clipped)."""

    def discard_dense_gradients(self) -> None:
        """Forget what `observe_dense_gradients` kept (the step it belonged to was skipped)."""

    def update_masks(self, ctx: SparseContext, step: int) -> Mapping[str, Tensor] | None:
        """New masks after optimizer step `step` (1-based, skipped fp16 steps not counted), or None."""
        return None

    def pruning_steps(self, total_steps: int) -> list[int]:
        """Optimizer steps after which this method changes the masks during training (`--lr_rewind` restarts
        the LR schedule there); empty for methods that prune only before training."""
        return []

    def reached_target(self, ctx: SparseContext, step: int) -> bool:
        """Whether the model is at its final sparsity after step `step`; earlier checkpoints are never 'best'."""
        return True

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable method state saved in every checkpoint."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned."""

    def tensor_state(self) -> dict[str, Tensor]:
        """Tensor state saved in every checkpoint beside `state_dict` (the criterion's, e.g. movement scores)."""
        return self.criterion.tensor_state() if self.criterion is not None else {}

    def load_tensor_state(self, state: Mapping[str, Tensor]) -> None:
        if self.criterion is not None:
            self.criterion.load_tensor_state(state)


_NEEDS_TEXT = {
    "weights": "only the weights",
    "gradients": "gradients of training batches at the pruning step",
    "training": "statistics gathered over the optimizer steps before each pruning event",
    "calibration": "activations of calibration data, which only one-shot pruning before or after fine-tuning "
                   "collects",
}
_NEEDS_METHODS = {
    "weights": "another method",
    "gradients": "another method",
    "training": "a method that trains between pruning events (gmp)",
    "calibration": "a one-shot method (omp_before, omp_after)",
}


def select_masks(
    ctx: SparseContext,
    scores: Mapping[str, LayerScores],
    density: float,
    distribution: str | None = None,
    outlier_ratios: Mapping[str, float] | None = None,
) -> dict[str, Tensor]:
    """Keep the highest scores at `density`, spread over layers by `--distribution`, or N of every M along each
    weight's input dimension under `--sparsity_pattern N:M` (`pattern_masks`).

    `density` is relative to the whole prunable set; `outlier_ratios` feed `--distribution owl`. Returns bool
    masks shaped like the weights.
    """
    distribution = distribution or ctx.sparsity.distribution
    pattern = ctx.sparsity.nm
    if pattern is not None:
        return pattern_masks(ctx, scores, density, pattern, distribution)
    capacity = {name: src.within_count() for name, src in scores.items()}
    counts = layer_counts(distribution, ctx.shapes(), density, capacity, outlier_ratios=outlier_ratios,
                          owl_lambda=ctx.sparsity.owl_lambda)
    if counts is None:
        flat = select_topk(scores, keep_count(density, ctx.masks.total))
    else:
        flat = {}
        for name, src in scores.items():
            flat.update(select_topk({name: src}, counts[name]))
    return {t.name: flat[t.name].view(t.param.shape) for t in ctx.targets}


def pattern_masks(
    ctx: SparseContext, scores: Mapping[str, LayerScores], density: float, pattern: NMPattern, distribution: str
) -> dict[str, Tensor]:
    """Masks under an N:M pattern: exactly N of every M at the pattern's density (within each score's `within`,
    so an iterative chain's last round never regrows); at a higher density (an iterative round below the
    pattern's sparsity) exactly the density's budget with at least N of every M, the N highest of each group
    first and the rest by score: one threshold over all layers (`global`) or each layer at the density
    (`uniform`), so a round is the unstructured round it would be, plus the floor that keeps the pattern in reach.
    """
    if abs(density - pattern.density) <= 1e-9:
        return {t.name: nm_keep_mask(scores[t.name].values(0, t.numel).view(t.param.shape), pattern, t.input_dim,
                                     scores[t.name].within) for t in ctx.targets}
    if density < pattern.density:
        raise UsageError(f"sparsity pattern {pattern} keeps {pattern.density:g} of the weights; cannot select a "
                         f"density of {density:g} below it")
    capacity = {name: src.within_count() for name, src in scores.items()}
    counts = layer_counts(distribution, ctx.shapes(), density, capacity)
    keep = keep_count(density, ctx.masks.total) if counts is None else counts
    layouts = {t.name: (t.param.shape, t.input_dim) for t in ctx.targets}
    return nm_floor_masks({t.name: scores[t.name] for t in ctx.targets}, layouts, pattern, keep)


def magnitude_sources(ctx: SparseContext, within_current: bool = False) -> dict[str, LayerScores]:
    """|w| scores of every prunable weight; with `within_current`, only currently kept weights compete."""
    return {
        t.name: magnitude_scores(t.param, ctx.current_mask(t.name) if within_current else None) for t in ctx.targets
    }


def require(condition: bool, message: str) -> None:
    """Raise ValueError(message) unless condition holds (keeps `validate_args` bodies flat)."""
    if not condition:
        raise UsageError(message)
