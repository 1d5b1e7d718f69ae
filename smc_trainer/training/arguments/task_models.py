"""The protein and translation task models' flags: the head's learning rate and schedule, the models' dropouts.

Training flags, beside the arithmetic model's (`arithmetic.py`), rather than data flags: they change the model and
its optimization, not which data a run reads. They were data flags when the first keys were written, so they are
keyed with the data flags (`section="data"`: always present, in the dense-cache key too) and every existing key
stays the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from smc_trainer.errors import UsageError
from smc_trainer.training.arguments.roles import declare

PROTEIN_LR_SCHEDULES = ("one_cycle", "trainer")


@dataclass
class ProteinArguments:
    """The protein classifier's head learning rate, learning-rate schedule and backbone dropout (tasks/protein)."""

    help_group: ClassVar[str] = "Protein model (ESM / ProteinBERT head and schedule)"

    protein_head_learning_rate: float | None = declare(field(
        default=None,
        metadata={"help": "Protein: learning rate of the new classification head (paper: 2e-2); --learning_rate is "
                  "the backbone's (paper: 1e-6). Default: --learning_rate."},
    ), key="dense", section="data")
    protein_lr_schedule: str = declare(field(
        default="one_cycle",
        metadata={"help": "Protein: one_cycle (torch OneCycleLR over all optimizer steps, each parameter group "
                  "peaking at its own learning rate, as the paper) or trainer (--lr_scheduler_type)."},
    ), key="dense", section="data")
    protein_dropout: float | None = declare(field(
        default=None,
        metadata={"help": "Protein: hidden and attention dropout of the ESM backbone (paper: 0 for ESM-1B). "
                  "Default: the checkpoint's config."},
    ), key="dense", section="data")

    def _check_protein_model(self) -> None:
        """Refused for every recipe (the flags are read by protein recipes only, but a bad value is a typo)."""
        if self.protein_lr_schedule not in PROTEIN_LR_SCHEDULES:
            raise UsageError(f"--protein_lr_schedule must be one of {', '.join(PROTEIN_LR_SCHEDULES)}; got "
                             f"{self.protein_lr_schedule!r}")
        if self.protein_dropout is not None and not 0.0 <= self.protein_dropout < 1.0:
            raise UsageError(f"--protein_dropout must be in [0, 1); got {self.protein_dropout}")
        if self.protein_head_learning_rate is not None and self.protein_head_learning_rate <= 0:
            raise UsageError(f"--protein_head_learning_rate must be > 0; got {self.protein_head_learning_rate}")


@dataclass
class TranslationArguments:
    """The translation model's dropouts, set on its config before loading (tasks/translation)."""

    help_group: ClassVar[str] = "Translation model (mBART dropouts)"

    translation_dropout: float | None = declare(field(
        default=None, metadata={"help": "Translation: the model's dropout (mBART `dropout`; paper 0.3). Default: "
                                "the checkpoint's."}
    ), key="dense", section="data")
    translation_attention_dropout: float | None = declare(field(
        default=None, metadata={"help": "Translation: the model's attention dropout (paper 0.1). Default: the "
                                "checkpoint's."}
    ), key="dense", section="data")
