"""LoRA on sparse models (`--peft lora`): masked adapters, targets named as in the plain model, releases.

- `layers`: `SparseLoraLinear` / `MaskedLoraVariant`, the adapter update masked by the base weight's mask;
- `wrap`: flags -> `LoraConfig` -> `PeftModel`, the checks that keep a LoRA run sparse, mask binding;
- `release`: the merged sparse model or the adapter alone, and `load_sparse_adapter`;
- `convert`: a user's own `PeftModel` made sparse-safe (its LoRA layers converted to masked ones, IA3 accepted,
  other tuners refused).

Needs `peft` (`pip install smc-trainer[peft]`); nothing else in the package imports it.
"""

from __future__ import annotations

from smc_trainer.training.adapters.convert import convert_user_lora, prepare_user_peft_model
from smc_trainer.training.adapters.layers import MaskedLoraVariant, MaskRef, SparseLoraLinear
from smc_trainer.training.adapters.release import load_sparse_adapter, merged_copy, remask, save_lora_release
from smc_trainer.training.adapters.wrap import (
    bind_masks,
    check_adapter_layers,
    is_peft_model,
    lora_config_for,
    sparse_lora_config,
    wrap_with_lora,
)

__all__ = ["MaskRef", "MaskedLoraVariant", "SparseLoraLinear", "bind_masks", "check_adapter_layers",
           "convert_user_lora", "is_peft_model", "load_sparse_adapter", "lora_config_for", "merged_copy",
           "prepare_user_peft_model", "remask", "save_lora_release", "sparse_lora_config", "wrap_with_lora"]
