"""Gradient accumulation and the loss of heads that declare **kwargs but return a mean (transformers#47688):
SparseTrainer normalizes them per micro-batch, so accumulating gives the step of one big batch, for the task
loss alone and mixed with distillation."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from sparse_helpers import InOrderTrainer, no_dropout_bert, sparse_args, toy_dataset
from tiny_models import make_tiny
from transformers import GPT2LMHeadModel, PreTrainedModel

from smc_trainer.training.loss_scaling import loss_uses_num_items


def one_sgd_step(tmp_path, hardness: float, batch: int, accumulation: int, data: Dataset) -> dict[str, torch.Tensor]:
    kd = dict(distill_teacher="dense", distill_hardness=hardness, distill_temperature=2.0) if hardness else {}
    args = sparse_args(tmp_path / f"{hardness}-{batch}x{accumulation}", "omp_before", 0.5, max_steps=1, optim="sgd",
                       learning_rate=0.5, weight_decay=0.0, max_grad_norm=0.0, lr_scheduler_type="constant",
                       per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation, **kd)
    trainer = InOrderTrainer(model=no_dropout_bert(0), args=args, train_dataset=data,
                             teacher=no_dropout_bert(7) if hardness else None)
    assert trainer.model_accepts_loss_kwargs is False  # BERT's head keeps a mean CrossEntropyLoss
    trainer.train()
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("hardness", [0.0, 0.5, 1.0])
def test_accumulating_four_micro_batches_equals_one_batch_of_sixteen(tmp_path, hardness):
    data = toy_dataset(16)
    accumulated = one_sgd_step(tmp_path, hardness, batch=4, accumulation=4, data=data)
    whole = one_sgd_step(tmp_path, hardness, batch=16, accumulation=1, data=data)
    start = {n: p.detach() for n, p in no_dropout_bert(0).named_parameters()}
    assert any(not torch.equal(whole[n], start[n]) for n in whole)
    for n in whole:
        torch.testing.assert_close(accumulated[n], whole[n], rtol=1e-5, atol=1e-7)


def test_which_heads_use_num_items_in_batch():
    assert loss_uses_num_items(make_tiny("bert")) is False  # **kwargs, but an inline mean CrossEntropyLoss
    assert loss_uses_num_items(make_tiny("t5")) is False
    assert loss_uses_num_items(GPT2LMHeadModel(make_tiny("gpt2").config)) is True  # self.loss_function(**kwargs)

    class Declared(PreTrainedModel):
        accepts_loss_kwargs = True

    assert loss_uses_num_items(Declared.__new__(Declared)) is True
    plain = torch.nn.Linear(2, 2)
    assert loss_uses_num_items(plain) is False  # no **kwargs: the Trainer never passes it
