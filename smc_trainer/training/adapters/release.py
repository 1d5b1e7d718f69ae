"""What a LoRA run releases: the merged sparse model (default) or the adapter alone, and how to load the latter.

Merged: peft's own `merge_and_unload()` on a copy of the trained model, saved with `save_pretrained` (plain
safetensors, pruned weights exactly zero; `--sparse_adapter false` re-masks after the merge). Adapter:
`adapter_config.json` + `adapter_model.safetensors` (the LoRA factors and the fully trained head) beside the
masks; `load_sparse_adapter` (or `PeftModel.from_pretrained(base, path, config=sparse_lora_config(...))` after
pruning the base with the masks) puts it back on the sparse base.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

import torch
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers.utils import logging

from smc_trainer.engine.masks import MASKS_NAME
from smc_trainer.errors import MissingFileError, UsageError
from smc_trainer.training.adapters.wrap import bind_masks, sparse_lora_config

logger = logging.get_logger(__name__)

RELEASE_KINDS = ("merged", "adapter")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILES = (ADAPTER_CONFIG, "adapter_model.safetensors", "adapter_model.bin")
PLAIN_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "generation_config.json")


class StaticMasks:
    """Masks loaded from a release, for `bind_masks` outside a training run."""

    def __init__(self, masks: Mapping[str, Tensor]):
        self.masks = dict(masks)


def remask(model: nn.Module, masks: Mapping[str, Tensor]) -> int:
    """Zero the pruned positions of `model`'s weights (plain names); returns how many weights that changed."""
    params = {name: p for name, p in model.named_parameters()}
    changed = 0
    with torch.no_grad():
        for name, mask in masks.items():
            param = params[name]
            mask = mask.to(param.device)
            changed += int(torch.count_nonzero(param[~mask]))
            param.mul_(mask)
    return changed


def merged_copy(model: PeftModel, remask_with: Mapping[str, Tensor] | None = None) -> nn.Module:
    """The plain model with the adapters merged by peft's own `merge_and_unload()`, the trained model untouched.
    `remask_with`: masks applied after the merge (plain LoRA, `--sparse_adapter false`)."""
    merged = copy.deepcopy(model).merge_and_unload()
    if remask_with:
        changed = remask(merged, remask_with)
        logger.info(f"re-masked the merged model: {changed:,} pruned weights the plain adapter had filled are zero "
                    "again")
    return merged


def _remove(output_dir: str, names: tuple[str, ...], why: str) -> None:
    for name in names:
        path = os.path.join(output_dir, name)
        if os.path.isfile(path):
            os.remove(path)
            logger.warning(f"removed {name} of an earlier save from {output_dir} ({why})")


def save_lora_release(model: PeftModel, output_dir: str, kind: str, masks: Mapping[str, Tensor],
                      *, sparse_adapter: bool, processing_class: Any = None) -> None:
    """Write the model part of a LoRA run's release into `output_dir` (masks, report and card are written by the
    caller, as for every release)."""
    if kind not in RELEASE_KINDS:
        raise UsageError(f"--lora_release must be one of {', '.join(RELEASE_KINDS)}; got {kind!r}")
    os.makedirs(output_dir, exist_ok=True)
    if kind == "merged":
        merged_copy(model, None if sparse_adapter else masks).save_pretrained(output_dir)
        # an adapter_config.json beside config.json makes from_pretrained load it as an adapter: never leave one
        _remove(output_dir, ADAPTER_FILES, "this release is the merged model")
    else:
        model.save_pretrained(output_dir)
        _remove(output_dir, PLAIN_FILES, "this release is the adapter alone")
    if processing_class is not None:
        processing_class.save_pretrained(output_dir)


def check_base_fits(base_model: nn.Module, masks: Mapping[str, Tensor], where: str) -> None:
    """Every mask names a weight of `base_model` with its shape; raised before the base is touched."""
    params = {name: p for name, p in base_model.named_parameters()}
    for name, mask in masks.items():
        if name not in params:
            raise UsageError(f"{where}: its mask {name!r} names no weight of the base model "
                             f"{type(base_model).__name__}; load the adapter on the base it was trained on")
        if tuple(mask.shape) != tuple(params[name].shape):
            raise UsageError(f"{where}: the mask of {name!r} is {tuple(mask.shape)} but the base model's weight is "
                             f"{tuple(params[name].shape)}; this base is not the adapter's sparse base")


def load_sparse_adapter(base_model: nn.Module, path: str, *, is_trainable: bool = False,
                        adapter_name: str = "default") -> PeftModel:
    """An adapter release (`--lora_release adapter`) on `base_model`: the base pruned by the release's masks,
    then `PeftModel.from_pretrained` with the masked LoRA layers bound to those masks.

    The masks are checked against `base_model` before it is changed (a base whose shapes disagree is refused
    and left as it was)."""
    if not os.path.isfile(os.path.join(path, ADAPTER_CONFIG)):
        raise MissingFileError(f"{path} holds no {ADAPTER_CONFIG}: it is not an adapter release")
    masks_path = os.path.join(path, MASKS_NAME)
    masks = load_file(masks_path) if os.path.isfile(masks_path) else {}
    check_base_fits(base_model, masks, f"adapter release {path}")
    remask(base_model, masks)
    config = sparse_lora_config(LoraConfig.from_pretrained(path))
    model = PeftModel.from_pretrained(base_model, path, adapter_name=adapter_name, is_trainable=is_trainable,
                                      config=config)
    bind_masks(model, StaticMasks(masks))
    return model
