"""Argument dataclasses: the single source of configuration, and of the CLI's `--help`.

`ModelArguments` and `DataArguments` live in `smc_trainer.training.task_arguments` and are re-exported here.

`SparseTrainingArguments` extends `transformers.TrainingArguments` with every sparse flag, so a
user (or a recipe YAML) configures training and sparsity in one place. The flags are grouped by concern
into mixin dataclasses, one module each (method and prunable set, one-shot and N:M, schedules, outputs,
LoRA, criterion, distillation, LR rewinding, extensions), with the checks of their values beside them.
A check may read other groups' fields (and TrainingArguments') through `self`: the mixins are built only as
parts of `SparseTrainingArguments`.
Validation runs in `__post_init__`, before any model download or training starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import Seq2SeqTrainingArguments

from smc_trainer.training.arguments.criterion import CriterionArguments
from smc_trainer.training.arguments.distillation import DISTILL_SOURCES, DistillationArguments
from smc_trainer.training.arguments.extensions import ExtensionArguments
from smc_trainer.training.arguments.lora import (
    ADAPTER_GRADIENTS,
    LORA_RELEASES,
    PEFT_CHOICES,
    LoraArguments,
    check_peft_flags,
    lora_defaults,
)
from smc_trainer.training.arguments.lr_rewind import LrRewindArguments
from smc_trainer.training.arguments.method import DISTRIBUTIONS, MethodArguments
from smc_trainer.training.arguments.oneshot import OneShotArguments
from smc_trainer.training.arguments.output import SELECT_ON, OutputArguments, SelectionArguments
from smc_trainer.training.arguments.schedules import (
    DynamicArguments,
    GmpArguments,
    GmpStarArguments,
    IterativeArguments,
)
from smc_trainer.training.parallel import check_parallel_support
from smc_trainer.training.task_arguments import DataArguments, ModelArguments

# the flag groups and, as before the split, the choices, lora_defaults and check_peft_flags
__all__ = ["ADAPTER_GRADIENTS", "DISTILL_SOURCES", "DISTRIBUTIONS", "LORA_RELEASES", "PEFT_CHOICES",
           "SELECT_ON", "CriterionArguments", "DataArguments", "DistillationArguments", "DynamicArguments",
           "ExtensionArguments", "GmpArguments", "GmpStarArguments", "IterativeArguments", "LoraArguments",
           "LrRewindArguments", "MethodArguments", "ModelArguments", "OneShotArguments", "OutputArguments",
           "SelectionArguments", "SparseTrainingArguments", "check_peft_flags", "lora_defaults"]


# A dataclass lists its fields base first, walking the MRO backwards: the mixin named LAST comes first after
# TrainingArguments' own. The bases are therefore listed in reverse, so that `dataclasses.fields()`, `--help`
# and `to_dict()` keep the order the flags had in the single class (method ... extensions).
@dataclass
class SparseTrainingArguments(
    ExtensionArguments,
    GmpStarArguments,
    LrRewindArguments,
    DistillationArguments,
    CriterionArguments,
    SelectionArguments,
    LoraArguments,
    OutputArguments,
    IterativeArguments,
    DynamicArguments,
    GmpArguments,
    OneShotArguments,
    MethodArguments,
    Seq2SeqTrainingArguments,
):
    """`TrainingArguments` plus the sparse-training flags (SMC-Bench methods, targets, schedules).

    It derives from `Seq2SeqTrainingArguments` (a `TrainingArguments` with the generation flags
    `--predict_with_generate`, `--generation_max_length`, `--generation_num_beams`), so generative
    tasks (translation, arithmetic equations) evaluate by decoding with the same trainer.
    """

    def __post_init__(self) -> None:
        self.validate_sparse_flags()
        super().__post_init__()

    def validate_sparse_flags(self) -> None:
        """Reject bad sparse flags with the flag, the value and the valid choices, before anything runs.

        The checks live with their flags' mixins; their order here is the order in which a user with several
        bad flags hears about them."""
        from smc_trainer.methods import get_method_class
        from smc_trainer.plugins import load_plugins

        load_plugins(self.plugins)  # before the registries are read: a plugin may add the method or criterion

        self._check_sparsity_and_distribution()
        self._check_select_on()
        self._check_layer_collapse_policy()
        self._check_method_and_targets()
        method = get_method_class(self.sparse_method)
        self._check_pattern_and_calibration(method)
        self._check_no_training(method)
        method.validate_args(self)
        method.validate_criterion(self)
        self.validate_training_variants(method)
        check_peft_flags(self)
        check_parallel_support(self)  # FSDP / DeepSpeed with a sparse method: refused before any model loads

    def validate_training_variants(self, method) -> None:
        """Distillation and LR rewinding: values, and the methods they make sense with."""
        self._check_distillation(method)
        self._check_lr_rewind(method)
