"""Where and how results are written, and the split that selects checkpoints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from smc_trainer.engine.collapse import COLLAPSE_POLICIES
from smc_trainer.engine.collapse import check_policy as check_collapse_policy
from smc_trainer.training.arguments.common import _choices_error
from smc_trainer.training.arguments.roles import declare

SELECT_ON = ("validation", "test")


@dataclass
class OutputArguments:
    """The dense cache, the ledger, the compressed release, output_dir reuse and collapsed layers."""

    help_group: ClassVar[str] = "Outputs (dense cache, ledger, release)"

    dense_cache_dir: str = declare(field(
        default="smc_outputs/dense_cache",
        metadata={"help": "Where dense fine-tunes are cached and shared by after-methods, LTH/LRR and the dense row."},
    ), key="never")
    ledger: str | None = declare(field(
        default=None, metadata={"help": "Append a record of each finished run to this results ledger (JSON lines)."}
    ), key="never")
    save_compressed: bool = declare(field(
        default=False,
        metadata={"help": "Also write model.sparse.safetensors: the weights in smc-trainer's bitmask format (packed "
                  "bits + non-zero values), with its size against the dense file in the model card."},
    ), key="never")
    overwrite_output_dir: bool = declare(field(
        default=False,
        metadata={"help": "Train from scratch even if output_dir holds checkpoints (files there may be replaced)."},
    ), key="never")
    on_layer_collapse: str = declare(field(
        default="warn",
        metadata={"choices": COLLAPSE_POLICIES,
                  "help": "When a mask leaves a prunable layer with no weight or fewer than 1 in 100 of them (while "
                  "the model keeps 10x that share): warn (name the layers and the remedies in the log, the sparsity "
                  "report and the ledger) or error (stop the run)."},
    ), key="run")

    def _check_layer_collapse_policy(self) -> None:
        check_collapse_policy(self.on_layer_collapse)


@dataclass
class SelectionArguments:
    """The split that checkpoint selection reads."""

    help_group: ClassVar[str] = "Checkpoint selection"

    select_on: str = declare(field(
        default="validation",
        metadata={"choices": SELECT_ON,
            "help": "Split used for checkpoint selection: validation (correct protocol) or test (the original code's "
            "test-selected protocol, for parity only)."
        },
    ), key="dense")

    def _check_select_on(self) -> None:
        if self.select_on not in SELECT_ON:
            raise _choices_error("select_on", self.select_on, SELECT_ON)
