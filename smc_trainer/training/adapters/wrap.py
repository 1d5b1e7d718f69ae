"""From flags to a `PeftModel`, and the checks that keep a LoRA run sparse.

`--peft lora` wraps the task's model with `get_peft_model(model, lora_config_for(model, args))`: LoRA on the
prunable linears of the transformer layers (or on `--lora_target_modules`), the task head trained fully
(`modules_to_save`), and, unless `--sparse_adapter false`, the masked layers of `smc_trainer.training.adapters.
layers`. A `PeftModel` built by the user is converted to masked layers (`convert.py`), then goes through
`check_adapter_layers` and `bind_masks` in `SparseTrainer` just the same.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torch import nn
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.pytorch_utils import Conv1D
from transformers.utils import logging

from smc_trainer.engine.sparsity import SparsityConfig
from smc_trainer.engine.targets import PruneTarget, plain_named_modules, unwrap_adapters
from smc_trainer.errors import UsageError
from smc_trainer.training.adapters.layers import MaskOwner, MaskRef, SparseLoraLinear

logger = logging.get_logger(__name__)

LINEAR_TYPES = (nn.Linear, Conv1D)


def is_peft_model(model: nn.Module) -> bool:
    """A peft container (`PeftModel` and its task subclasses)."""
    return isinstance(model, PeftModel)


def sparse_lora_config(config: LoraConfig) -> LoraConfig:
    """A copy of `config` whose Linear / Conv1D targets become `SparseLoraLinear` (masked update).

    Use it for a `PeftModel` of your own (`get_peft_model(model, sparse_lora_config(LoraConfig(...)))`) or to
    load an adapter release (`PeftModel.from_pretrained(base, path, config=sparse_lora_config(...))`)."""
    if config.lora_bias:
        raise UsageError("a sparse adapter supports plain LoRA and DoRA, not lora_bias (a trained bias is outside the "
                         "masked update); drop it, or pass --sparse_adapter false")
    config = copy.deepcopy(config)
    config._register_custom_module({nn.Linear: SparseLoraLinear, Conv1D: SparseLoraLinear})
    return config


def _plain_linears(model: nn.Module) -> dict[str, nn.Module]:
    """Plain name -> module of every Linear / Conv1D of `model`, seen through adapters."""
    return {name: module for name, module in plain_named_modules(model) if isinstance(module, LINEAR_TYPES)}


def head_modules(model: nn.Module, targets: Iterable[PruneTarget] | None = None) -> list[str]:
    """Top-level modules outside the base model that hold parameters (the task head), trained fully.

    A module whose weights are tied to the base model (a language-model head tied to the input embeddings) is
    left out: copying it for training would untie it."""
    plain = unwrap_adapters(model)
    base = getattr(plain, "base_model", plain)
    if base is plain:
        return []
    base_ids = {id(p) for p in base.parameters()}
    return [name for name, child in plain.named_children()
            if child is not base and any(True for _ in child.parameters())
            and not any(id(p) in base_ids for p in child.parameters())]


def lora_target_modules(model: nn.Module, args) -> list[str]:
    """Full plain names of the modules that get a LoRA adapter.

    Default: the Linear / Conv1D modules of the prunable weights outside the task head and embeddings.
    `--lora_target_modules a,b`: the Linear / Conv1D modules of the base model whose name is `a` or ends in `.a`;
    a name that matches none is refused, naming the ones that exist."""
    linears = _plain_linears(model)
    heads = tuple(f"{h}." for h in head_modules(model)) + tuple(head_modules(model))
    body = {name: m for name, m in linears.items() if not name.startswith(heads) and name not in heads}
    wanted = [w.strip() for w in (args.lora_target_modules or "").split(",") if w.strip()]
    if not wanted:
        prunable = {t.name.rsplit(".", 1)[0] for t in SparsityConfig.from_flags(args).targets(model)
                    if t.group not in ("head", "embeddings")}
        chosen = [name for name in body if name in prunable]
        if not chosen:
            raise UsageError("--peft lora: no prunable Linear/Conv1D module outside the task head to put an adapter "
                             "on; name them with --lora_target_modules")
        return chosen
    chosen = []
    for want in wanted:
        hits = [name for name in body if name == want or name.endswith(f".{want}")]
        if not hits:
            short = sorted({name.rsplit(".", 1)[-1] for name in body})
            raise UsageError(f"--lora_target_modules {want!r} matches no Linear/Conv1D module of "
                             f"{type(unwrap_adapters(model)).__name__} outside its task head; the modules are named "
                             f"{', '.join(short)} (or give a full name such as {next(iter(body), '-')!r})")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def is_causal_lm_model(model: nn.Module) -> bool:
    """A transformers causal LM (`AutoModelForCausalLM`'s classes: LlamaForCausalLM, GPT2LMHeadModel, ...)."""
    return type(unwrap_adapters(model)).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def lora_config_for(model: nn.Module, args) -> LoraConfig:
    """The `LoraConfig` of `--lora_r/--lora_alpha/--lora_dropout/--lora_target_modules/--sparse_adapter`; a causal
    LM gets peft's CAUSAL_LM task type (a `PeftModelForCausalLM`, whose `generate` the scorers use) and a frozen
    language-model head."""
    targets = lora_target_modules(model, args)
    linears = _plain_linears(model)
    kinds = {type(linears[t]) is Conv1D for t in targets}
    if len(kinds) > 1:
        raise UsageError("--lora_target_modules mixes Conv1D and Linear modules; target one kind per run")
    causal = is_causal_lm_model(model)
    # a causal LM's head is its language-model head (vocabulary x hidden): frozen, as LoRA recovery of LLMs does
    config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                        target_modules=targets, modules_to_save=None if causal else head_modules(model) or None,
                        fan_in_fan_out=kinds == {True}, task_type=TaskType.CAUSAL_LM if causal else None)
    return sparse_lora_config(config) if args.sparse_adapter else config


def wrap_with_lora(model: nn.Module, args) -> PeftModel:
    """`model` inside a `PeftModel` configured by the flags; the base weights frozen, adapters and head trainable."""
    if is_peft_model(model):
        raise UsageError("the model is already a PeftModel; hand it to SparseTrainer as it is, without --peft lora")
    config = lora_config_for(model, args)
    peft_model = get_peft_model(model, config)
    train_head_copies(peft_model)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    logger.info(f"--peft lora: {len(config.target_modules)} adapters of rank {args.lora_r} "
                f"({'masked by the base masks' if args.sparse_adapter else 'plain, re-masked after the merge'}), head "
                f"{config.modules_to_save}; {trainable:,} of {total:,} parameters trainable")
    return peft_model


def train_head_copies(peft_model: PeftModel) -> list[str]:
    """Make every parameter of the head copies that `modules_to_save` trains trainable.

    peft matches `modules_to_save` names by suffix, so a head module named like one of its own children (GTS's
    `merge` network holds a `merge` linear) also gets a nested wrapper, and the copy that trains is left with
    that child frozen: a silent half-trained head. The trained copy of each top-level wrapper is its
    `modules_to_save[adapter]`, so all of it trains. Returns the names of the parameters it made trainable."""
    unfrozen = []
    for name, module in unwrap_adapters(peft_model).named_modules():
        copies = getattr(module, "modules_to_save", None)
        if isinstance(copies, nn.ModuleDict) and hasattr(module, "original_module") and not _inside_wrapper(name):
            for adapter in getattr(module, "active_adapters", copies.keys()):
                if adapter in copies:
                    for param_name, param in copies[adapter].named_parameters():
                        if not param.requires_grad:
                            param.requires_grad_(True)
                            unfrozen.append(f"{name}.modules_to_save.{adapter}.{param_name}")
    return unfrozen


def _inside_wrapper(name: str) -> bool:
    """A module nested in another modules_to_save wrapper (its copy or original), not a head of its own."""
    return ".modules_to_save." in f".{name}." or ".original_module." in f".{name}."


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Plain base-module name -> peft tuner layer, for every layer that carries LoRA adapters."""
    found = {}
    for name, module in unwrap_adapters(model).named_modules():
        if hasattr(module, "lora_A") and callable(getattr(module, "get_base_layer", None)):
            found[_plain_name(name)] = module
    return found


def _plain_name(name: str) -> str:
    return name.replace(".base_layer", "")


def check_adapter_layers(model: nn.Module, targets: list[PruneTarget], sparse_adapter: bool) -> None:
    """Refuse adapters that would break sparsity, before training.

    With `sparse_adapter`, every LoRA layer over a prunable weight must be a `SparseLoraLinear` whose adapters all
    use the masked variant; a plain peft layer (or one a peft release built differently) would fill pruned
    positions. Embedding adapters are refused either way they cannot be masked here."""
    prunable = {t.name.rsplit(".", 1)[0] for t in targets}
    for name, layer in lora_layers(model).items():
        if name not in prunable:
            continue
        if getattr(layer, "lora_embedding_A", None):
            raise UsageError(f"a LoRA adapter on the embedding {name!r} cannot be masked; leave embeddings out of "
                             "the LoRA target modules (or --prune_embeddings false)")
        if not sparse_adapter:
            continue
        variants = getattr(layer, "lora_variant", {})
        masked = ("MaskedLoraVariant", "MaskedDoraVariant")
        if not isinstance(layer, SparseLoraLinear) or any(type(variants.get(a)).__name__ not in masked
                                                          for a in layer.lora_A):
            raise UsageError(f"the LoRA layer on {name!r} ({type(layer).__name__}) does not mask its update (only "
                             "LoRA on Linear/Conv1D layers can be masked), so training and merging would fill pruned "
                             "weights. Leave it out of the LoRA target modules, exclude it from the prunable set "
                             "(--prune_exclude), or pass --sparse_adapter false to re-mask after the merge")


def plain_parameter_names(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its name in the plain model (first name of a tied weight, as `find_targets`)."""
    names: dict[int, str] = {}
    for mod_name, module in plain_named_modules(model):
        for attr, param in module.named_parameters(recurse=False):
            names.setdefault(id(param), f"{mod_name}.{attr}" if mod_name else attr)
    return names


def bind_masks(model: nn.Module, owner: MaskOwner, *, straight_through: bool = False) -> int:
    """Point every `SparseLoraLinear` at its base weight's mask in `owner` (by plain name); returns how many
    layers sit on a weight `owner` may mask (with a `MaskSet`: a prunable weight). `straight_through`: the
    adapters' gradient (`--adapter_gradient`)."""
    names = plain_parameter_names(model)
    known = set(getattr(owner, "by_name", owner.masks))
    bound = 0
    for module in unwrap_adapters(model).modules():
        if isinstance(module, SparseLoraLinear):
            name = names.get(id(module.get_base_layer().weight))
            module.bind_mask(MaskRef(owner, name) if name is not None else None)
            module.straight_through = straight_through
            bound += name in known
    return bound
