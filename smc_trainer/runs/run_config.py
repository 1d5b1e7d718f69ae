"""What defines a run (`RunConfig`) and what one fine-tune produced (`RunOutcome`).

The bottom of the runs layer: recipes, the dense cache, folds, the pipeline, sweeps, releases and the CLI
all speak in these two types, so they live apart from the code that runs them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from smc_trainer.release.provenance import override_flags
from smc_trainer.training.arguments import DataArguments, ModelArguments, SparseTrainingArguments

RESULT_NAME = "run_result.json"


@dataclass
class RunConfig:
    """Everything that defines a run: the three argument dataclasses and the recipe."""

    model_args: ModelArguments
    data_args: DataArguments
    training_args: SparseTrainingArguments
    recipe: Any  # smc_trainer.runs.recipes.Recipe
    flags: tuple[str, ...] | None = None
    """The `run_smc.py` flags that give this configuration (later flags win); None for the Python API.
    Kept so a run can state the command that reproduces it without re-parsing (smc_trainer.release.provenance)."""

    def with_training(self, **changes: Any) -> RunConfig:
        """A copy with some training arguments replaced (validated again by __post_init__)."""
        return dataclasses.replace(self, training_args=dataclasses.replace(self.training_args, **changes),
                                   flags=self._flags_with(changes))

    def with_data(self, **changes: Any) -> RunConfig:
        """A copy with some data arguments replaced (e.g. one fold of a cross-validated recipe)."""
        return dataclasses.replace(self, data_args=dataclasses.replace(self.data_args, **changes),
                                   flags=self._flags_with(changes))

    def _flags_with(self, changes: dict[str, Any]) -> tuple[str, ...] | None:
        return None if self.flags is None else (*self.flags, *override_flags(changes))


@dataclass
class RunOutcome:
    """What one fine-tune produced: where, how sparse, and how well it scores."""

    method: str
    target_sparsity: float
    mask_sparsity: float
    measured_sparsity: float
    metrics: dict[str, float]
    output_dir: str
    steps: int
    wall_time_s: float
    layers: list[dict[str, Any]] = field(default_factory=list)
    round: int | None = None
    model: str = ""

    def save(self, directory: str) -> None:
        with open(os.path.join(directory, RESULT_NAME), "w", encoding="utf-8") as fh:
            json.dump(dataclasses.asdict(self), fh, indent=2)

    @classmethod
    def load(cls, directory: str) -> RunOutcome | None:
        path = os.path.join(directory, RESULT_NAME)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as fh:
            return cls(**json.load(fh))
