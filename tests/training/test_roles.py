"""Every flag of ours declares its role where it is declared (smc_trainer.training.arguments.roles)."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import Seq2SeqTrainingArguments

from smc_trainer.errors import UsageError
from smc_trainer.runs.pipeline import dense_resets
from smc_trainer.training.arguments import SparseTrainingArguments, lora_defaults
from smc_trainer.training.arguments.roles import Role, declare, declared, role_of


def test_every_sparse_flag_declares_a_role():
    base = {f.name for f in dataclasses.fields(Seq2SeqTrainingArguments)}
    ours = [f.name for f in dataclasses.fields(SparseTrainingArguments) if f.name not in base]
    missing = [name for name in ours if name not in declared(SparseTrainingArguments)]
    assert ours and not missing, f"flags without a declared role (wrap them in roles.declare): {missing}"


def test_dense_resets_are_the_sparse_axes_at_their_defaults():
    args = SparseTrainingArguments(output_dir="unused")
    resets = dense_resets()
    assert {"criterion", "distill_teacher", "lr_rewind", "sparsity_pattern", "distribution"} <= set(resets)
    assert all(getattr(args, name) == value for name, value in resets.items())


def test_lora_flags_are_the_lora_group():
    assert lora_defaults() == {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "lora_target_modules": None,
                               "lora_learning_rate": None, "sparse_adapter": True, "adapter_gradient": "exact",
                               "lora_release": "merged"}


def test_a_role_is_found_on_the_field_it_was_declared_on_only():
    spec = declare(dataclasses.field(default=1), key="never")
    assert role_of(spec).key == "never"
    assert role_of(dataclasses.field(default=1)) is None
    with pytest.raises(UsageError, match="key must be one of run, dense, never; got 'cache'"):
        declare(dataclasses.field(default=1), key="cache")
    with pytest.raises(UsageError, match="section must be one of training, data; got 'model'"):
        declare(dataclasses.field(default=1), section="model")


def test_the_task_model_settings_are_keyed_with_the_data_flags():
    """Moved out of DataArguments, they keep the role they had there: in every key, under "data"."""
    data = {name for name, role in declared(SparseTrainingArguments).items() if role.section == "data"}
    assert data == {"encoder_learning_rate", "lr_step_epochs", "lr_step_gamma", "gts_hidden_size", "gts_num_layers",
                    "gts_dropout", "gts_encoder_dropout", "protein_head_learning_rate", "protein_lr_schedule",
                    "protein_dropout", "translation_dropout", "translation_attention_dropout"}
    assert all(declared(SparseTrainingArguments)[name] == Role(key="dense", section="data") for name in data)
