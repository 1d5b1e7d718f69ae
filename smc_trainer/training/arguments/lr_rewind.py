"""LR rewinding: restart the LR schedule after every pruning event of a gradual method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from smc_trainer.errors import UsageError
from smc_trainer.training.arguments.common import _choices_error
from smc_trainer.training.arguments.roles import declare


@dataclass
class LrRewindArguments:
    """--lr_rewind and the LR each cycle ends at."""

    help_group: ClassVar[str] = "Learning-rate rewinding"

    lr_rewind: bool = declare(field(
        default=False,
        metadata={"help": "Restart the LR schedule after every pruning event of a gradual method (gmp with any "
                  "criterion): each cycle runs --lr_scheduler_type (linear, cosine, constant) from the peak LR."},
    ), key="run", omit_at_default=True, dense_reset=True)
    lr_rewind_final_ratio: float = declare(field(
        default=0.0,
        metadata={"help": "With --lr_rewind: LR at the end of each cycle as a fraction of the peak (oBERT's "
                  "8e-5 -> 8e-6: 0.1)."},
    ), key="run", omit_at_default=True)

    def _check_lr_rewind(self, method) -> None:
        """Only a gradual method has pruning events to restart at; the schedule must be one that restarts."""
        if self.lr_rewind and method.phase != "during":
            hint = " (lth/lrr restart the LR every round already)" if method.phase == "iterative" else ""
            raise UsageError(f"--lr_rewind restarts the LR at pruning events during training, which --sparse_method "
                             f"{self.sparse_method} ({method.phase}) does not have{hint}; use it with gmp")
        if not 0.0 <= self.lr_rewind_final_ratio <= 1.0:
            raise UsageError(f"--lr_rewind_final_ratio must be in [0, 1]; got {self.lr_rewind_final_ratio}")
        if self.lr_rewind:
            from smc_trainer.training.lr_rewind import SHAPES

            shape = getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type)
            if shape not in SHAPES:
                raise _choices_error("lr_scheduler_type (with --lr_rewind)", shape, SHAPES)
