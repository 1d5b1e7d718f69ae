"""GTS's optimization (SVAMP / SMC-Bench code): Adam with L2 weight decay, the pretrained encoder at its own
learning rate, and a StepLR schedule counted in epochs (x gamma every `step_epochs` epochs).

The original keeps one Adam and one StepLR per module; one Adam with two parameter groups and one StepLR
is the same update. The pair is handed to the SparseTrainer as `optimizers=(optimizer, scheduler)`:
the Trainer steps the scheduler after every optimizer step, saves and restores both in checkpoints,
and the SparsityCallback sees this optimizer (for the optimizer-state reset when masks change).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from smc_trainer.errors import UsageError


def update_steps_per_epoch(num_examples: int, args) -> int:
    """Optimizer steps in one epoch, counted as the Trainer counts them (batches per process, then accumulation)."""
    batch = args.train_batch_size * max(1, args.world_size)  # train_batch_size counts DataParallel GPUs
    batches = num_examples // batch if args.dataloader_drop_last else math.ceil(num_examples / batch)
    return max(1, math.ceil(batches / args.gradient_accumulation_steps))


def gts_optimizers(model: nn.Module, args, encoder_learning_rate: float, step_epochs: int, gamma: float,
                   num_train_examples: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """(Adam over [encoder at `encoder_learning_rate`, everything else at --learning_rate], StepLR)."""
    if step_epochs < 1 or not 0.0 < gamma <= 1.0:
        raise UsageError(f"--lr_step_epochs must be >= 1 and --lr_step_gamma in (0, 1]; got {step_epochs}, {gamma}")
    encoder = {id(p) for p in model.base_model.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) in encoder], "lr": encoder_learning_rate},
        {"params": [p for p in trainable if id(p) not in encoder], "lr": args.learning_rate},
    ]
    optimizer = torch.optim.Adam([g for g in groups if g["params"]], betas=(args.adam_beta1, args.adam_beta2),
                                 eps=args.adam_epsilon, weight_decay=args.weight_decay)
    step_size = step_epochs * update_steps_per_epoch(num_train_examples, args)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
