"""The criterion interface: scores from a `ScoringView`, plus optional per-step and after-pruning hooks.

What a criterion may read is in `ScoringView` (the prunable weights, which of them compete, the
event's step and two ways to get gradients from training batches). `needs` says what it reads, so
a method that cannot provide it refuses the pair at parse time:

- "weights":   the weights alone (magnitude, random)
- "gradients": gradients of training batches at the moment of scoring (snip, obert)
- "training":  statistics gathered over optimizer steps (movement): only methods that train between
               pruning events (`gmp`) can use it
- "calibration": activations of calibration data run through the model (wanda, sparsegpt): only the one-shot
               before- and after-methods collect them

Most criteria only score and let the method's selection (`--distribution`, `--sparsity_pattern`) choose the
masks; a criterion that chooses masks its own way (Wanda within each row, SparseGPT inside its column loop)
overrides `select`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from torch import Tensor

from smc_trainer.engine.hyperparameters import HyperParameters, NoHyperParameters, checked_config
from smc_trainer.engine.selection import LayerScores
from smc_trainer.engine.sparsity import SparsityConfig
from smc_trainer.engine.targets import PruneTarget
from smc_trainer.errors import UsageError
from smc_trainer.registry import Registry

NEEDS = ("weights", "gradients", "training", "calibration")
CALIBRATION_MEMORY = ("block", "layer")
"""How a calibrator holds Hessians: a block's at once, or one layer group's at a time (`Calibrator.sequential`)."""

Selector = Callable[[Mapping[str, LayerScores], Mapping[str, float] | None], dict[str, Tensor]]
"""The method's selection: (scores by name, OWL outlier ratios or None) -> bool masks at the event's density."""


class Calibrator(Protocol):
    """Calibration data run through the model with forward hooks (`smc_trainer.training.calibration`)."""

    def input_norms(self, targets: Sequence[PruneTarget]) -> dict[str, Tensor]:
        """||X_j||_2 per input feature of each target's linear, over the calibration tokens (dense model)."""

    def sequential(self, targets: Sequence[PruneTarget], prune: Callable[[list[PruneTarget], Tensor], None],
                   memory: str = "block") -> None:
        """Block by block in forward order: the Hessian X X^T of each group of targets that read the same input,
        with the earlier blocks already pruned; `prune(group, hessian)` may overwrite it. `memory` is
        --calibration_memory (block: a block's Hessians at once; layer: one at a time, more forward passes)."""


def _check_needs(name: str, cls: type[Criterion]) -> None:
    if cls.needs not in NEEDS:
        raise UsageError(f"criterion {name!r}: needs must be one of {', '.join(NEEDS)}; got {cls.needs!r}")


CRITERIA: Registry[type[Criterion]] = Registry("criterion", "--criterion", [os.path.dirname(__file__)],
                                               "smc_trainer.engine.criteria", check=_check_needs)


def register_criterion(name: str, config: type[HyperParameters] | None = None
                       ) -> Callable[[type[Criterion]], type[Criterion]]:
    """Class decorator: make a criterion available as `--criterion name`, with its own hyper-parameters
    (`config`, a `HyperParameters` dataclass whose fields become flags)."""
    return CRITERIA.register(name, config)


def no_gradient_batches(n: int | None) -> Iterator[None]:
    raise UsageError("this criterion needs gradients of training batches, which this pruning step cannot provide")


@dataclass
class ScoringView:
    """What a criterion sees at one pruning event.

    `within[name]`: only True positions compete (the currently kept weights for gradual methods), None: all.
    `gradient_batches(n)`: runs `n` training batches one at a time (None: one full pass); after each
    backward it yields with that batch's dense gradients in every weight's `.grad`.
    `accumulate_gradients(n)`: leaves the sum of `n` batches' gradients in `.grad` (SNIP).
    `batches_per_pass`: how many batches one full pass over the training data has (counted on first use).
    `calibrator`: activation statistics of calibration data (None where the method collects none).
    """

    targets: list[PruneTarget]
    within: Mapping[str, Tensor | None] = field(default_factory=dict)
    step: int = 0
    gradient_batches: Callable[[int | None], Iterator[None]] = no_gradient_batches
    accumulate_gradients: Callable[[int], None] = lambda n: no_gradient_batches(n)  # noqa: E731
    count_batches_per_pass: Callable[[], int] | None = None
    calibrator: Calibrator | None = None

    @property
    def batches_per_pass(self) -> int:
        return self.count_batches_per_pass() if self.count_batches_per_pass is not None else 0

    def mask_of(self, name: str) -> Tensor | None:
        return self.within.get(name)


class Criterion:
    """Base class. `scores` is the one required override."""

    name: ClassVar[str] = ""
    needs: ClassVar[str] = "weights"
    order: ClassVar[int] = 50  # position in `criterion_names()`
    frozen_base_conflict: ClassVar[str | None] = None
    """Why the criterion cannot prune a base model that LoRA wraps (None: it can)."""

    config_class: ClassVar[type[HyperParameters]] = NoHyperParameters
    """The criterion's own hyper-parameters (`register_criterion(name, config=...)`); values in `self.config`."""

    def __init__(self, config: HyperParameters | None = None, sparsity: SparsityConfig | None = None):
        self.config = checked_config(type(self), config)
        self.sparsity = sparsity if sparsity is not None else SparsityConfig()

    @classmethod
    def from_args(cls, args: Any, sparsity: SparsityConfig | None = None) -> Criterion:
        """The criterion configured by the training arguments' flags (its config's and the shared sparsity's)."""
        return cls(cls.config_class.from_flags(args), sparsity if sparsity is not None else
                   SparsityConfig.from_flags(args))

    @classmethod
    def validate_args(cls, args: Any) -> None:
        """Raise UsageError for flags this criterion cannot run with (called at parse time)."""

    def scores(self, view: ScoringView) -> dict[str, LayerScores]:
        """Importance of every prunable weight (higher: kept first), as lazy `LayerScores` by name."""
        raise NotImplementedError

    def select(self, view: ScoringView, density: float, select: Selector) -> dict[str, Tensor]:
        """Bool masks keeping `density` of the prunable set: by default the highest `scores`, chosen by the method's
        `select` (its --distribution or N:M pattern)."""
        return select(self.scores(view), None)

    def observe_step(self, targets: list[PruneTarget], step: int) -> None:
        """The dense gradients of optimizer step `step` are in `.grad` (only for needs == "training")."""

    def after_selection(self, view: ScoringView, masks: Mapping[str, Tensor]) -> None:
        """Called once the new masks are chosen, before they are installed (oBERT's weight update)."""

    def tensor_state(self) -> dict[str, Tensor]:
        """Tensors to keep in every checkpoint (e.g. accumulated scores); names are free-form."""
        return {}

    def load_tensor_state(self, state: Mapping[str, Tensor]) -> None:
        """Restore what `tensor_state` returned."""
