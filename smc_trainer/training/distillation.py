"""Knowledge distillation from the dense model: loss = (1 - h) task + h T^2 KL(teacher/T || student/T).

The teacher (the cached dense fine-tune of the same configuration, or a model from a path) runs in
eval mode without gradients, on the student's device and precision, on the very batch the student
sees. The KL term is summed over the items the task loss averages over (one per example for class
logits; one per labelled token for token logits, -100 labels left out) and normalized the same way
as the Trainer normalizes the task loss, so gradient accumulation scales both terms alike.

Models whose logits are not one forward's plain output take part through two optional hooks: a class
attribute `distillation_teacher_kwargs` (extra forward arguments for the eval-mode teacher; GTS passes
`decode=False` to get its teacher-forced per-step scores instead of a beam search), and a `logits_mask` in the
outputs (the steps that count; GTS's scored steps of the gold tree, the same for teacher and student).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from smc_trainer.errors import UsageError

IGNORE_INDEX = -100


def _output_field(outputs: Any, name: str) -> Any:
    """`name` of a model output (ModelOutput or dict by key, else by attribute), None when absent."""
    return outputs.get(name) if isinstance(outputs, Mapping) else getattr(outputs, name, None)


def output_logits(outputs: Any, model: nn.Module) -> Tensor:
    """The `logits` of a model output (ModelOutput, dict or tuple with logits second)."""
    logits = _output_field(outputs, "logits")
    if logits is None:
        raise UsageError(f"--distill_teacher needs a model whose outputs have logits; {type(model).__name__} returns "
                         f"{type(outputs).__name__} without them")
    return logits


def output_logits_mask(outputs: Any) -> Tensor | None:
    """The outputs' `logits_mask` (which rows of the logits are items), if the model gives one."""
    return _output_field(outputs, "logits_mask")


def kd_sum(student_logits: Tensor, teacher_logits: Tensor, temperature: float,
           labels: Tensor | None = None, mask: Tensor | None = None) -> tuple[Tensor, int]:
    """(sum over items of KL(softmax(t/T) || softmax(s/T)), number of items).

    Logits are (..., classes); an item is one row of the last dimension. `mask` (the logits' shape without
    the last dimension) says which rows count; else, with token logits (B, L, V) and labels (B, L), only
    positions whose label is not -100 count. Classes both models rule out (-inf, or float32's minimum as GTS
    masks them) add nothing.
    """
    if student_logits.shape != teacher_logits.shape:
        raise UsageError(f"teacher logits {tuple(teacher_logits.shape)} do not match the student's "
                         f"{tuple(student_logits.shape)}: the teacher must be the same architecture and task head")
    s = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    t = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    p = t.exp()
    per_item = torch.where(p > 0, p * (t - s), torch.zeros_like(p)).sum(-1)
    if mask is not None:
        return per_item[mask].sum(), int(mask.sum())
    if labels is not None and student_logits.dim() >= 3 and labels.shape == per_item.shape:
        keep = labels != IGNORE_INDEX
        return per_item[keep].sum(), int(keep.sum())
    return per_item.sum(), per_item.numel()


def distillation_loss(task_loss: Tensor, kd: Tensor, hardness: float, temperature: float) -> Tensor:
    """(1 - h) task + h T^2 kd, where `kd` is the normalized KL term."""
    return (1.0 - hardness) * task_loss + hardness * temperature**2 * kd


@dataclass
class Distiller:
    """The teacher and the two knobs; `loss` turns a task loss and the student's outputs into the KD loss."""

    teacher: nn.Module
    hardness: float
    temperature: float

    def prepare(self, device: torch.device, dtype: torch.dtype | None) -> None:
        """Eval mode, no gradients, on the student's device (and dtype, for a half-precision student)."""
        self.teacher.eval()
        self.teacher.requires_grad_(False)
        self.teacher.to(device=device, dtype=dtype if dtype in (torch.float16, torch.bfloat16) else None)

    @torch.no_grad()
    def teacher_logits(self, inputs: Mapping[str, Any]) -> Tensor:
        """The teacher's logits on the student's batch (with the teacher's `distillation_teacher_kwargs`)."""
        extra = getattr(self.teacher, "distillation_teacher_kwargs", {})
        return output_logits(self.teacher(**inputs, **extra), self.teacher)

    def loss(self, task_loss: Tensor, outputs: Any, teacher_logits: Tensor, labels: Tensor | None,
             normalizer: float | Tensor | None) -> Tensor:
        """`normalizer`: divide the KL sum by it (the Trainer's `num_items_in_batch`); None: by the local items."""
        total, items = kd_sum(output_logits(outputs, self.teacher), teacher_logits, self.temperature, labels,
                              output_logits_mask(outputs))
        kd = total / (normalizer if normalizer is not None else max(items, 1))
        return distillation_loss(task_loss, kd, self.hardness, self.temperature)
