"""The method interface: a few small hooks, no Trainer internals.

A method sees the run through a `SparseContext` (targets, current masks, arguments, step budget
and a way to get gradients from training batches). It returns new masks; the MaskSet installs
them (zeroing weights and optimizer state) and the callback decides when each hook runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from smc_trainer.engine.distributions import layer_counts
from smc_trainer.engine.masks import MaskSet
from smc_trainer.engine.selection import LayerScores, keep_count, magnitude_scores, select_topk
from smc_trainer.engine.targets import PruneTarget
from smc_trainer.errors import UsageError

if TYPE_CHECKING:
    from smc_trainer.training.arguments import SparseTrainingArguments

METHOD_REGISTRY: dict[str, type[SparseMethod]] = {}


def register_method(name: str) -> Callable[[type[SparseMethod]], type[SparseMethod]]:
    """Class decorator: make a method available as `--sparse_method name`."""

    def wrap(cls: type[SparseMethod]) -> type[SparseMethod]:
        if name in METHOD_REGISTRY and METHOD_REGISTRY[name] is not cls:
            raise UsageError(f"sparse method {name!r} is registered twice")
        cls.name = name
        METHOD_REGISTRY[name] = cls
        return cls

    return wrap


@dataclass
class SparseContext:
    """What a method may look at: the prunable weights, their masks, the flags and the step budget."""

    targets: list[PruneTarget]
    masks: MaskSet
    args: SparseTrainingArguments
    total_steps: int
    accumulate_gradients: Callable[[int], None]
    """Run `n` training batches forward and backward; leaves the summed dense gradients in `.grad`."""

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {t.name: tuple(t.param.shape) for t in self.targets}

    def current_mask(self, name: str) -> Tensor | None:
        return self.masks.masks.get(name)


class SparseMethod:
    """Base class. Override the hooks a method needs; the defaults do nothing (dense)."""

    name: ClassVar[str] = ""
    phase: ClassVar[str] = "dense"  # dense | before | during | dynamic
    order: ClassVar[int] = 50  # position in `method_names()` (help texts, tables)
    frozen_base_conflict: ClassVar[str | None] = None
    """Why the method needs to train the weights it prunes, so it is refused with `--peft lora` (None: it works
    on a frozen base, the adapters and head doing the training)."""

    def __init__(self, args: SparseTrainingArguments):
        self.args = args

    @classmethod
    def validate_args(cls, args: SparseTrainingArguments) -> None:
        """Raise ValueError for flags this method cannot run with (called before any work starts)."""

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

    def reached_target(self, ctx: SparseContext, step: int) -> bool:
        """Whether the model is at its final sparsity after step `step`; earlier checkpoints are never 'best'."""
        return True

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable method state saved in every checkpoint."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned."""


def select_masks(
    ctx: SparseContext, scores: Mapping[str, LayerScores], density: float, distribution: str | None = None
) -> dict[str, Tensor]:
    """Keep the highest scores at `density`, spread over layers by `--distribution`.

    `density` is relative to the whole prunable set. Returns bool masks shaped like the weights.
    """
    distribution = distribution or ctx.args.distribution
    capacity = {name: src.within_count() for name, src in scores.items()}
    counts = layer_counts(distribution, ctx.shapes(), density, capacity)
    if counts is None:
        flat = select_topk(scores, keep_count(density, ctx.masks.total))
    else:
        flat = {}
        for name, src in scores.items():
            flat.update(select_topk({name: src}, counts[name]))
    return {t.name: flat[t.name].view(t.param.shape) for t in ctx.targets}


def magnitude_sources(ctx: SparseContext, within_current: bool = False) -> dict[str, LayerScores]:
    """|w| scores of every prunable weight; with `within_current`, only currently kept weights compete."""
    return {
        t.name: magnitude_scores(t.param, ctx.current_mask(t.name) if within_current else None) for t in ctx.targets
    }


def require(condition: bool, message: str) -> None:
    """Raise ValueError(message) unless condition holds (keeps `validate_args` bodies flat)."""
    if not condition:
        raise UsageError(message)
