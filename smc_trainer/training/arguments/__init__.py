"""Argument dataclasses: the single source of configuration, and of the CLI's `--help`.

`ModelArguments` and `DataArguments` live in `smc_trainer.training.task_arguments` and are re-exported here.

`SparseTrainingArguments` extends `transformers.TrainingArguments` with every sparse flag, so a
user (or a recipe YAML) configures training and sparsity in one place. The flags are grouped by concern
into mixin dataclasses, one module each (method and prunable set, one-shot and N:M, schedules, outputs,
LoRA, criterion, distillation, LR rewinding, the task models' settings (arithmetic, protein, translation), causal LM,
extensions), with the checks of their values beside them.
A check may read other groups' fields (and TrainingArguments') through `self`: the mixins are built only as
parts of `SparseTrainingArguments`.
Validation runs in `__post_init__`, before any model download or training starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import InitVar, dataclass

from transformers import Seq2SeqTrainingArguments

from smc_trainer.engine.hyperparameters import HyperParameters
from smc_trainer.errors import UsageError
from smc_trainer.training.arguments.arithmetic import ARITHMETIC_MODELS, ArithmeticArguments
from smc_trainer.training.arguments.causal_lm import LLM_TASKS, TORCH_DTYPES, CausalLmArguments
from smc_trainer.training.arguments.criterion import CriterionArguments, ObertArguments
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
from smc_trainer.training.arguments.method import DISTRIBUTIONS, MethodArguments, SnipArguments
from smc_trainer.training.arguments.oneshot import OneShotArguments, SparseGptArguments, WandaArguments
from smc_trainer.training.arguments.output import SELECT_ON, OutputArguments, SelectionArguments
from smc_trainer.training.arguments.schedules import (
    DynamicArguments,
    GmpArguments,
    ImpArguments,
    IterativeArguments,
)
from smc_trainer.training.arguments.task_models import ProteinArguments, TranslationArguments
from smc_trainer.training.parallel import check_parallel_support
from smc_trainer.training.task_arguments import DataArguments, ModelArguments

# the flag groups and, as before the split, the choices, lora_defaults and check_peft_flags
__all__ = ["ADAPTER_GRADIENTS", "ARITHMETIC_MODELS", "DISTILL_SOURCES", "DISTRIBUTIONS", "LLM_TASKS", "LORA_RELEASES",
           "PEFT_CHOICES", "SELECT_ON", "TORCH_DTYPES", "ArithmeticArguments", "CausalLmArguments",
           "CriterionArguments", "DataArguments",
           "DistillationArguments", "DynamicArguments", "ExtensionArguments", "GmpArguments", "ImpArguments",
           "IterativeArguments", "LoraArguments", "LrRewindArguments", "MethodArguments", "ModelArguments",
           "ObertArguments", "OneShotArguments", "OutputArguments", "ProteinArguments", "SelectionArguments",
           "SnipArguments", "SparseGptArguments", "SparseTrainingArguments", "TranslationArguments", "WandaArguments",
           "check_peft_flags", "lora_defaults"]


# A dataclass lists its fields base first, walking the MRO backwards: the mixin named LAST comes first after
# TrainingArguments' own. The bases are therefore listed in reverse, so that `dataclasses.fields()`, `--help`
# and `to_dict()` keep the order the flags had in the single class (method ... extensions, then arithmetic).
@dataclass
class SparseTrainingArguments(
    ExtensionArguments,
    CausalLmArguments,
    TranslationArguments,
    ProteinArguments,
    ArithmeticArguments,
    LrRewindArguments,
    DistillationArguments,
    ObertArguments,
    CriterionArguments,
    SelectionArguments,
    LoraArguments,
    OutputArguments,
    IterativeArguments,
    DynamicArguments,
    GmpArguments,
    SparseGptArguments,
    WandaArguments,
    OneShotArguments,
    SnipArguments,
    MethodArguments,
    Seq2SeqTrainingArguments,
):
    """`TrainingArguments` plus the sparse-training flags (SMC-Bench methods, targets, schedules).

    It derives from `Seq2SeqTrainingArguments` (a `TrainingArguments` with the generation flags
    `--predict_with_generate`, `--generation_max_length`, `--generation_num_beams`), so generative
    tasks (translation, arithmetic equations) evaluate by decoding with the same trainer.

    A method's or criterion's own hyper-parameters may be handed over as their config instead of as flags:
    `SparseTrainingArguments(..., sparse_method="gmp", method_config=GmpConfig(start=0.1, end=0.8))` sets the
    flags the config stands for (`--gmp_start`, `--gmp_end`, ...), then checks them with everything else.
    """

    method_config: InitVar[HyperParameters | None] = None
    criterion_config: InitVar[HyperParameters | None] = None

    def __post_init__(self, method_config: HyperParameters | None = None,
                      criterion_config: HyperParameters | None = None) -> None:
        self._apply_configs(method_config, criterion_config)
        self.validate_sparse_flags()
        super().__post_init__()

    def _apply_configs(self, method_config: HyperParameters | None, criterion_config: HyperParameters | None) -> None:
        """Set the flags of the configs given in Python, after checking each belongs to the method or criterion."""
        from smc_trainer.engine.criteria import get_criterion_class
        from smc_trainer.methods import get_method_class
        from smc_trainer.plugins import load_plugins

        if method_config is None and criterion_config is None:
            return
        load_plugins(self.plugins)
        method = get_method_class(self.sparse_method)
        given = ((method_config, method.config_class, f"sparse_method {self.sparse_method!r}"),
                 (criterion_config, get_criterion_class(method.criterion_name(self) or "magnitude").config_class,
                  f"criterion {method.criterion_name(self)!r}"))
        for config, expected, owner in given:
            if config is None:
                continue
            if type(config) is not expected:
                raise UsageError(f"{type(config).__name__} is not the config of {owner}, which takes "
                                 f"{expected.__name__}")
            config.validate()  # in its own words (the parameters), before they become flags
            flags = config.to_flags()
            missing = sorted(set(flags) - {f.name for f in dataclasses.fields(self)})
            if missing:  # a plugin's config: its flags are fields of `arguments_class()` only
                raise UsageError(f"{type(config).__name__}'s flags ({', '.join(missing)}) are not fields of "
                                 f"{type(self).__name__}; build the arguments with "
                                 "smc_trainer.training.arguments.plugin_arguments.arguments_class() once the plugin is "
                                 "loaded")
            for flag, value in flags.items():
                setattr(self, flag, value)

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
        self._check_sparse_target(method)
        self._check_pattern_and_calibration(method)
        self._check_no_training(method)
        method.validate_config(self)
        method.validate_args(self)
        method.validate_criterion(self)
        self.validate_training_variants(method)
        check_peft_flags(self)
        self._check_arithmetic_model()
        self._check_causal_lm_flags()
        self._check_protein_model()
        check_parallel_support(self)  # FSDP / DeepSpeed with a sparse method: refused before any model loads

    def validate_training_variants(self, method) -> None:
        """Distillation and LR rewinding: values, and the methods they make sense with."""
        self._check_distillation(method)
        self._check_lr_rewind(method)
