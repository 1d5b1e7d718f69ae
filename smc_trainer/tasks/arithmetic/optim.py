"""GTS's optimization (SVAMP / SMC-Bench code): Adam with L2 weight decay, the pretrained encoder at its own
learning rate, and a StepLR schedule counted in epochs (x gamma every `step_epochs` epochs).

The original keeps one Adam and one StepLR per module; one Adam with two parameter groups and one StepLR
is the same update. Both reach the SparseTrainer as factories (`optimizer_cls_and_kwargs=(GTSAdam, ...)` and
`lr_scheduler_factory=GTSStepSchedule(...)`), so they are built on the model the Trainer finally trains: a
`--peft lora` run wraps the model after the task is built, and an optimizer made earlier would hold the frozen
base weights and miss the adapters. The Trainer steps the scheduler after every optimizer step, saves and
restores both in checkpoints, and the SparsityCallback sees this optimizer (for the optimizer-state reset when
masks change).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from smc_trainer.engine.targets import unwrap_adapters
from smc_trainer.errors import UsageError


def update_steps_per_epoch(num_examples: int, args) -> int:
    """Optimizer steps in one epoch, counted as the Trainer counts them (batches per process, then accumulation)."""
    batch = args.train_batch_size * max(1, args.world_size)  # train_batch_size counts DataParallel GPUs
    batches = num_examples // batch if args.dataloader_drop_last else math.ceil(num_examples / batch)
    return max(1, math.ceil(batches / args.gradient_accumulation_steps))


def gts_param_groups(model: nn.Module, encoder_lr: float, head_lr: float,
                     adapter_lr: float | None = None) -> list[dict]:
    """[encoder at `encoder_lr`, LoRA adapters in the encoder at `adapter_lr` (default `encoder_lr`), everything
    else (GTS's decoder and merge networks) at `head_lr`], trainable parameters only; empty groups dropped.

    The encoder is the plain model's `base_model`, seen through a peft wrapper."""
    encoder = {id(p): name for name, p in unwrap_adapters(model).base_model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    adapters = [p for p in trainable if "lora_" in encoder.get(id(p), "")]
    adapter_ids = {id(p) for p in adapters}
    groups = [
        {"params": [p for p in trainable if id(p) in encoder and id(p) not in adapter_ids], "lr": encoder_lr},
        {"params": adapters, "lr": encoder_lr if adapter_lr is None else adapter_lr},
        {"params": [p for p in trainable if id(p) not in encoder], "lr": head_lr},
    ]
    return [g for g in groups if g["params"]]


class GTSAdam:
    """Optimizer factory for `Trainer(optimizer_cls_and_kwargs=(GTSAdam, kwargs))`: the Trainer calls it with the
    model it trains and `kwargs` (`encoder_lr`, `head_lr`, `adapter_lr`, `weight_decay`, `betas`, `eps`)."""

    def __call__(self, model: nn.Module, *, encoder_lr: float, head_lr: float, weight_decay: float,
                 adapter_lr: float | None = None, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> torch.optim.Adam:
        groups = gts_param_groups(model, encoder_lr, head_lr, adapter_lr)
        return torch.optim.Adam(groups, lr=head_lr, betas=betas, eps=eps, weight_decay=weight_decay)


class GTSStepSchedule:
    """`lr_scheduler_factory`: StepLR that multiplies every group's rate by `gamma` every `step_epochs` epochs."""

    def __init__(self, step_epochs: int, gamma: float, steps_per_epoch: int):
        if step_epochs < 1 or not 0.0 < gamma <= 1.0:
            raise UsageError(f"--lr_step_epochs must be >= 1 and --lr_step_gamma in (0, 1]; got {step_epochs}, {gamma}")
        self.step_size, self.gamma = step_epochs * steps_per_epoch, gamma

    def __call__(self, optimizer: torch.optim.Optimizer, num_training_steps: int) -> torch.optim.lr_scheduler.StepLR:
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.step_size, gamma=self.gamma)


def gts_trainer_kwargs(args, encoder_learning_rate: float, step_epochs: int, gamma: float,
                       num_train_examples: int, head_learning_rate: float | None = None) -> dict:
    """The SparseTrainer kwargs of GTS's optimizer and schedule (`--lora_learning_rate` for LoRA adapters); the
    decoder's rate is `head_learning_rate` (default --learning_rate)."""
    schedule = GTSStepSchedule(step_epochs, gamma, update_steps_per_epoch(num_train_examples, args))
    adapter_lr = getattr(args, "lora_learning_rate", None) if getattr(args, "peft", "none") == "lora" else None
    head_lr = args.learning_rate if head_learning_rate is None else head_learning_rate
    kwargs = {"encoder_lr": encoder_learning_rate, "head_lr": head_lr, "adapter_lr": adapter_lr,
              "weight_decay": args.weight_decay, "betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon}
    return {"optimizer_cls_and_kwargs": (GTSAdam, kwargs), "lr_scheduler_factory": schedule}


def gts_optimizers(model: nn.Module, args, encoder_learning_rate: float, step_epochs: int, gamma: float,
                   num_train_examples: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """(Adam, StepLR) built now on `model`, from the same factories (for use outside the Trainer)."""
    kwargs = gts_trainer_kwargs(args, encoder_learning_rate, step_epochs, gamma, num_train_examples)
    factory, optimizer_kwargs = kwargs["optimizer_cls_and_kwargs"]
    optimizer = factory()(model, **optimizer_kwargs)
    return optimizer, kwargs["lr_scheduler_factory"](optimizer, 0)
