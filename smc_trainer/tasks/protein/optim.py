"""Two learning rates (ESM backbone, new head) in one AdamW, and the paper's OneCycle schedule.

The original ESM-1B scripts built one AdamW + OneCycleLR for the backbone and another pair for the
head, never called the head optimizer's `step()` (the head stayed at its random init) and stepped
each OneCycleLR once per *epoch* (`steps_per_epoch=1`), so each epoch ran at one constant rate
(0.04, 0.81, 0.28 and ~0 times the peak over the 4 epochs). Here:

- one AdamW holds four parameter groups (backbone / head, each with and without weight decay;
  biases and LayerNorm weights get none, as the HF Trainer does), so the Trainer steps, clips,
  masks and checkpoints backbone and head alike;
- torch's `OneCycleLR` (defaults: 30% cosine warm-up from peak/25, cosine anneal to peak/25e4,
  Adam beta1 cycled 0.95 -> 0.85 -> 0.95) advances once per optimizer step over the whole run,
  each group peaking at its own learning rate (paper: backbone 1e-6, head 2e-2).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR
from transformers.trainer_pt_utils import get_parameter_names
from transformers.utils import logging

from smc_trainer.errors import UsageError

logger = logging.get_logger(__name__)

NO_DECAY_PATTERNS = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


def head_and_backbone_groups(
    model: nn.Module, backbone_lr: float, head_lr: float, weight_decay: float
) -> list[dict[str, Any]]:
    """AdamW parameter groups: `backbone` = parameters under `model.base_model`, `head` = the rest.

    Each group carries a `name` ("backbone", "backbone_no_decay", "head", "head_no_decay"), its `lr` and
    `weight_decay`; frozen parameters are left out and empty groups dropped.
    """
    decay = set(get_parameter_names(model, [nn.LayerNorm], NO_DECAY_PATTERNS))
    prefix = getattr(model, "base_model_prefix", "") + "."
    buckets: dict[str, list[nn.Parameter]] = {"backbone": [], "backbone_no_decay": [], "head": [], "head_no_decay": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = "backbone" if name.startswith(prefix) else "head"
        buckets[part if name in decay else f"{part}_no_decay"].append(param)
    groups = []
    for name, params in buckets.items():
        if params:
            lr = backbone_lr if name.startswith("backbone") else head_lr
            groups.append({"name": name, "params": params, "lr": lr,
                           "weight_decay": 0.0 if name.endswith("no_decay") else weight_decay})
    if not any(g["name"].startswith("head") for g in groups):
        raise UsageError(f"{type(model).__name__} has no trainable parameters outside its base model "
                         f"({prefix[:-1]!r}), so there is no head to give its own learning rate")
    return groups


class HeadBackboneAdamW:
    """Optimizer factory for `Trainer(optimizer_cls_and_kwargs=(HeadBackboneAdamW, kwargs))`.

    The Trainer instantiates it without arguments and calls it with the model and `kwargs`
    (`backbone_lr`, `head_lr`, `weight_decay`, optional `betas`, `eps`); it returns one AdamW over
    `head_and_backbone_groups`.
    """

    def __call__(self, model: nn.Module, *, backbone_lr: float, head_lr: float, weight_decay: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.AdamW:
        groups = head_and_backbone_groups(model, backbone_lr, head_lr, weight_decay)
        return torch.optim.AdamW(groups, lr=backbone_lr, betas=betas, eps=eps)


def one_cycle_schedule(optimizer: torch.optim.Optimizer, num_training_steps: int) -> OneCycleLR:
    """torch `OneCycleLR` over `num_training_steps` optimizer steps, each group peaking at its own `lr`."""
    peaks = [group.get("max_lr", group["lr"]) for group in optimizer.param_groups]
    logger.info(f"protein: OneCycleLR over {num_training_steps} optimizer steps, peaks {peaks} (replaces "
                "--lr_scheduler_type and the warm-up flags)")
    return OneCycleLR(optimizer, max_lr=peaks, total_steps=num_training_steps)
