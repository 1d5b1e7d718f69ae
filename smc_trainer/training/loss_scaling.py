"""Whether a model's loss really is normalized by the Trainer's `num_items_in_batch`.

`transformers.Trainer` skips its division by `gradient_accumulation_steps` (and, under DDP with
`average_tokens_across_devices`, multiplies by the number of processes) whenever the model's `forward` declares
`**kwargs`, assuming the model then divides its summed loss by `num_items_in_batch`. Many heads declare
`**kwargs` for attention options only and keep a per-micro-batch mean loss (BERT and RoBERTa classification and
multiple choice, MBart, T5 in transformers 5.x; huggingface/transformers#47688). For them the task gradient comes
out `gradient_accumulation_steps` x (times the number of processes under DDP) too large, and a distillation term
normalized over the whole batch would be weighted differently at every accumulation and world size.

The Trainer's documented remedy is `model_accepts_loss_kwargs = False` for such models; `loss_uses_num_items`
says when to apply it.
"""

from __future__ import annotations

import inspect
import re

from torch import nn

# a forward that hands its keyword arguments (num_items_in_batch among them) to the shared loss functions, or
# reads num_items_in_batch itself
_USES_NUM_ITEMS = re.compile(r"num_items_in_batch|loss_function\([^)]*\*\*kwargs", re.DOTALL)


def loss_uses_num_items(model: nn.Module) -> bool | None:
    """True when `model`'s loss divides by `num_items_in_batch`, False when it ignores it, None when unknown.

    A model's own `accepts_loss_kwargs` (class or instance) is its answer. Otherwise a `forward` without
    `**kwargs` never receives it, and one with `**kwargs` uses it when its source passes them on to
    `self.loss_function` or names `num_items_in_batch`. None when the source cannot be read.
    """
    declared = getattr(model, "accepts_loss_kwargs", None)
    if declared is not None:
        return bool(declared)
    forward = type(model).forward
    parameters = inspect.signature(forward).parameters.values()
    if not any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters):
        return False
    try:
        source = inspect.getsource(forward)
    except (OSError, TypeError):
        return None
    return bool(_USES_NUM_ITEMS.search(source))
