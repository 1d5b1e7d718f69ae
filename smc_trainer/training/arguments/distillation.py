"""Distillation from a teacher: --distill_teacher, --distill_hardness, --distill_temperature."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

from smc_trainer.errors import MissingFileError, UsageError
from smc_trainer.training.arguments.roles import declare

DISTILL_SOURCES = ("none", "dense")  # or a path to a model folder


@dataclass
class DistillationArguments:
    """The teacher and the weight and temperature of its term in the loss."""

    help_group: ClassVar[str] = "Knowledge distillation"

    distill_teacher: str = declare(field(
        default="none",
        metadata={"help": "Distillation from a teacher: none, dense (the cached dense fine-tune of this configuration, "
                  "trained first if missing) or a path to a fine-tuned model folder of the same architecture."},
    ), key="run", omit_at_default=True, dense_reset=True)
    distill_hardness: float = declare(field(
        default=1.0,
        metadata={"help": "Distillation: weight h of the teacher term, loss = (1-h) task + h T^2 KL (oBERT: 1.0)."},
    ), key="run", omit_at_default=True)
    distill_temperature: float = declare(field(
        default=2.0, metadata={"help": "Distillation: softmax temperature T of teacher and student (GMP*: 5.5)."}
    ), key="run", omit_at_default=True)

    def _check_distillation(self, method) -> None:
        """The teacher exists, a sparse method learns from it, and the loss weights are in range."""
        if self.distill_teacher not in DISTILL_SOURCES and not os.path.isdir(self.distill_teacher):
            raise MissingFileError(f"--distill_teacher must be one of {', '.join(DISTILL_SOURCES)} or a model folder; "
                                   f"got {self.distill_teacher!r} (no such folder)")
        if self.distill_teacher != "none" and method.phase == "dense":
            raise UsageError(f"--distill_teacher {self.distill_teacher} distills into a sparse model; --sparse_method "
                             "dense is the cached dense fine-tune itself (pick a sparse method)")
        if not 0.0 <= self.distill_hardness <= 1.0:
            raise UsageError(f"--distill_hardness must be in [0, 1]; got {self.distill_hardness}")
        if not self.distill_temperature > 0.0:
            raise UsageError(f"--distill_temperature must be > 0; got {self.distill_temperature}")
