"""A `PeftModel` the user built, made to train sparse: plain LoRA layers become masked ones, other tuners checked.

A user writes `get_peft_model(base, LoraConfig(r=8, target_modules=[...]))` and hands the result to
`SparseTrainer`. Its LoRA layers would fill pruned weights when merged, so `convert_user_lora` rebuilds them, in
place and through peft's public API, as the masked `SparseLoraLinear` layers of `layers.py`: each adapter's
weights are read with `get_peft_model_state_dict`, the LoRA layers give way to their base layers, the adapter
is injected again (`inject_adapter`) from `sparse_lora_config(its config)` and its weights are put back with
`set_peft_model_state_dict`. Everything the user chose (r, alpha, dropout, rsLoRA, rank and alpha patterns,
target modules, `modules_to_save`, trainable flags, the active adapter) is kept, and the adapter's weights
come back bit for bit (checked).

`check_user_tuners` refuses what cannot keep the zeros: tuners whose update is a dense matrix (LoHa, LoKr,
OFT, VeRA, AdaLoRA, ...) and `modules_to_save` copies over prunable weights that the run does not mask.
IA3 is accepted as it is: it scales a layer's rows or columns, so a pruned weight stays zero.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.utils import logging

from smc_trainer.engine.sparsity import SparsityConfig
from smc_trainer.engine.targets import PruneTarget
from smc_trainer.errors import UsageError
from smc_trainer.training.adapters.layers import SparseLoraLinear
from smc_trainer.training.adapters.wrap import sparse_lora_config

logger = logging.get_logger(__name__)

# peft types a sparse run accepts, and why each keeps the zeros
ACCEPTED_TUNERS = {"LORA": "converted to masked LoRA layers", "IA3": "it scales weights, so zeros stay zero"}


def peft_type(config) -> str:
    """The tuner's name as peft spells it (`LORA`, `IA3`, `LOHA`, ...)."""
    kind = getattr(config, "peft_type", None)
    return str(getattr(kind, "value", kind))


def prepare_user_peft_model(model: PeftModel, args) -> int:
    """Check a user-built `PeftModel` and, with `--sparse_adapter` (the default), convert its LoRA layers to masked
    ones; returns how many layers were converted. Raised before training, naming the adapter or module and the
    fix."""
    check_user_tuners(model)
    check_copies(model, SparsityConfig.from_flags(args).targets(model))
    return convert_user_lora(model) if args.sparse_adapter else 0


def check_user_tuners(model: PeftModel) -> None:
    """Refuse tuners whose update would bring pruned weights back (all but LoRA and IA3)."""
    for name, config in model.peft_config.items():
        kind = peft_type(config)
        if kind not in ACCEPTED_TUNERS:
            why = ("it adds virtual tokens rather than adapting weights, which smc-trainer does not support"
                   if getattr(config, "is_prompt_learning", False) else
                   "its update is a dense matrix merged into each weight, which would fill the pruned positions")
            accepted = "; ".join(f"{k} ({v})" for k, v in ACCEPTED_TUNERS.items())
            raise UsageError(f"your PeftModel's adapter {name!r} is {kind}: {why}. A sparse run accepts {accepted}. "
                             "Build it with peft.LoraConfig or peft.IA3Config, or train without a sparse method")


def check_copies(model: PeftModel, targets: list[PruneTarget]) -> None:
    """A `modules_to_save` wrapper over a prunable weight may hold the active adapter's copy only: that copy is the
    weight the run prunes and masks (full fine-tuning of that module, exact zeros); another adapter's copy is never
    masked and would bring back every pruned weight of the module if that adapter were merged."""
    prunable = {id(t.param): t.name for t in targets}
    for module_name, module in model.get_base_model().named_modules():
        copies = getattr(module, "modules_to_save", None)
        if not isinstance(copies, nn.ModuleDict) or not hasattr(module, "original_module"):
            continue
        active = set(getattr(module, "active_adapters", []))
        masked = [prunable[id(p)] for a in active if a in copies for p in copies[a].parameters() if id(p) in prunable]
        if not masked:
            continue
        for adapter in copies:
            if adapter not in active:
                raise UsageError(
                    f"modules_to_save: {module_name!r} holds a full copy for adapter {adapter!r}, which is not active, "
                    f"so the sparse run cannot mask it, and merging that adapter would bring back every pruned weight "
                    f"of {masked[0]!r}. Delete adapter {adapter!r} (model.delete_adapter), drop {module_name!r} from "
                    f"its modules_to_save, or exclude it from the prunable set (--prune_exclude / --no_prune_heads)")


def adapted_layers(model: PeftModel) -> int:
    """How many layers of the base model carry an adapter (LoRA, IA3, ...); `modules_to_save` copies aside."""
    return sum(1 for m in model.get_base_model().modules() if isinstance(m, BaseTunerLayer))


def lora_adapters(model: PeftModel) -> list[str]:
    """Names of the model's LoRA adapters (peft type LORA; AdaLoRA and other LoraConfig subclasses excluded)."""
    return [name for name, config in model.peft_config.items() if peft_type(config) == "LORA"]


def _plain_lora_layers(model: PeftModel) -> dict[str, LoraLayer]:
    """Full module name (inside the base model) -> every LoRA layer that is not yet a `SparseLoraLinear`."""
    return {name: module for name, module in model.get_base_model().named_modules()
            if isinstance(module, LoraLayer) and not isinstance(module, SparseLoraLinear)}


def convert_user_lora(model: PeftModel) -> int:
    """Rebuild the plain LoRA layers of `model`'s LoRA adapters as masked `SparseLoraLinear` layers, in place.

    Returns how many layers are masked afterwards (0: nothing to convert). Layers that cannot be masked (an
    embedding, a Conv2d) come back as plain LoRA layers; `check_adapter_layers` names them. Refused: merged
    adapters, and `lora_bias` (a trained bias is outside the masked update). DoRA converts to `MaskedDoraVariant`."""
    adapters = lora_adapters(model)
    plain = _plain_lora_layers(model)
    if not adapters or not plain:
        return 0
    if any(getattr(layer, "merged", False) for layer in plain.values()):
        raise UsageError("your PeftModel has merged LoRA adapters; call model.unmerge_adapter() before handing it to "
                         "SparseTrainer")
    configs = {name: sparse_lora_config(model.peft_config[name]) for name in adapters}  # lora_bias refused here
    states = {name: {k: v.detach().clone() for k, v in get_peft_model_state_dict(model, adapter_name=name).items()}
              for name in adapters}
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    active = list(model.active_adapters)
    tuner, inner = model.base_model, model.get_base_model()
    for name, layer in plain.items():  # every LoRA layer gives way to its base layer
        parent, _, child = name.rpartition(".")
        setattr(inner.get_submodule(parent), child, layer.get_base_layer())
    devices = sorted({p.device.index for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):  # the adapters' fresh initialisation must not move the seed
        for name in adapters:
            tuner.peft_config[name] = configs[name]
            tuner.inject_adapter(inner, name)
            result = set_peft_model_state_dict(model, states[name], adapter_name=name)
            if result.unexpected_keys:
                raise RuntimeError(f"converting adapter {name!r} to masked layers left weights unplaced: "
                                   f"{result.unexpected_keys[:3]}")
    tuner.set_adapter(active)
    for name, param in model.named_parameters():
        if name in trainable:
            param.requires_grad_(trainable[name])
    _check_same_weights(model, states)
    converted = sum(isinstance(m, SparseLoraLinear) for m in inner.modules())
    logger.info("smc-trainer: converted your PeftModel's LoRA to masked adapters (the update is zero wherever "
                f"the base weight is pruned): {converted} layers, " +
                "; ".join(_describe(name, configs[name]) for name in adapters))
    return converted


def _check_same_weights(model: PeftModel, states: dict[str, dict[str, torch.Tensor]]) -> None:
    """Every adapter weight is back, bit for bit (fails loudly if a peft release changes the public calls)."""
    for name, before in states.items():
        after = get_peft_model_state_dict(model, adapter_name=name)
        if after.keys() != before.keys() or any(not torch.equal(after[k], before[k]) for k in before):
            raise RuntimeError(f"converting adapter {name!r} to masked layers changed its weights; please report "
                               "this with your peft version")


def _describe(name: str, config: LoraConfig) -> str:
    """`adapter 'default': r=8, lora_alpha=16, rsLoRA, dropout 0.1, modules query, value` for the log line."""
    modules = config.target_modules
    modules = ", ".join(sorted(modules)) if isinstance(modules, (set, list, tuple)) else repr(modules)
    parts = [f"adapter {name!r}: r={config.r}", f"lora_alpha={config.lora_alpha}"]
    if config.use_rslora:
        parts.append("rsLoRA")
    if config.rank_pattern or config.alpha_pattern:
        parts.append("rank/alpha patterns")
    parts.append(f"dropout {config.lora_dropout}")
    parts.append(f"modules {modules}")
    if config.modules_to_save:
        parts.append(f"modules_to_save {', '.join(config.modules_to_save)}")
    return ", ".join(parts)
