"""Which parameters are prunable: the 2-D weights of Linear, Conv1D, Embedding and recurrent (LSTM/GRU) modules.

No per-architecture code: embeddings are found by module type, the task head as the parameters
outside `model.base_model` (or the output embeddings when the model is its own base). Biases and
norm weights are 1-D and never pruned. Tied weights appear once (by their first name). A model may
name weights it keeps dense with a `keep_dense_weights` attribute (a regex on parameter names): GTS
keeps its unused pooler, merge network and constant embeddings dense, as the official code.

Adapters are seen through (DESIGN: "targets see through adapters"): in a peft `PeftModel` the prunable
weights are the base layers' weights and the active copies of fully trained modules, named as in the plain
model (`bert.encoder.layer.0.attention.self.query.weight`, `classifier.weight`), so masks move between a
LoRA run and the plain model. Wrappers are recognised by duck typing (`plain_named_modules`); the engine
never imports peft.

Decoder language models (GPT-2, Llama, Qwen2, Mistral, OPT, ...: `is_decoder_lm`, told by structure) keep
everything outside their decoder blocks dense by default, as Wanda and SparseGPT prune only the blocks' linears:
the input and output embeddings (`lm_head`) and any projection between them and the blocks. `include` opts those
weights back in by naming them (`include=r"lm_head|layers"`); `prune_embeddings` / `prune_heads` only ever remove.
Every other model's prunable set is what it always was.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from smc_trainer.engine.module_groups import module_group_regex
from smc_trainer.errors import UsageError

BASE_PRUNABLE_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Embedding)


def prunable_module_types() -> tuple[type[nn.Module], ...]:
    """Linear and Embedding, plus transformers' GPT-2 style transposed `Conv1D` when transformers is loaded.

    Read from `sys.modules` rather than imported: the engine stays torch-only, and a model that holds a
    `Conv1D` has necessarily loaded transformers already."""
    conv1d = getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)
    return BASE_PRUNABLE_MODULES + ((conv1d,) if conv1d is not None else ())
RECURRENT_MODULES: tuple[type[nn.Module], ...] = (nn.RNNBase,)  # LSTM / GRU / RNN: every 2-D `weight_*`
GROUPS = ("embeddings", "head", "layers", "other")
_LAYER_INDEX = re.compile(r"\.(\d+)\.")


@dataclass(frozen=True)
class PruneTarget:
    """One prunable weight: its parameter name, the tensor, and the group it is reported under."""

    name: str
    param: nn.Parameter
    group: str  # "embeddings", "head", "layer_<i>" or "other"
    input_dim: int = 1  # the dimension a matmul reduces over: 0 for a transposed Conv1D (N:M groups run along it)

    @property
    def numel(self) -> int:
        return self.param.numel()


def unwrap_adapters(model: nn.Module) -> nn.Module:
    """The model inside an adapter container (peft's `PeftModel.get_base_model()`), else `model` itself."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def _seen_through(module: nn.Module) -> nn.Module | None:
    """The module an adapter wrapper stands for, or None when `module` is no wrapper.

    A LoRA-style layer (`get_base_layer()` and a `base_layer` child) stands for its base layer; a fully trained
    copy wrapper (`original_module` + `modules_to_save`) for the copy of its active adapter."""
    get_base_layer = getattr(module, "get_base_layer", None)
    if callable(get_base_layer) and isinstance(getattr(module, "base_layer", None), nn.Module):
        return get_base_layer()
    copies, original = getattr(module, "modules_to_save", None), getattr(module, "original_module", None)
    if isinstance(copies, nn.ModuleDict) and isinstance(original, nn.Module):
        active = [a for a in getattr(module, "active_adapters", []) if a in copies]
        return copies[active[0]] if active and not getattr(module, "disable_adapters", False) else original
    return None


def plain_named_modules(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """`named_modules()` as if `model` carried no adapters: wrappers are replaced by the module they stand for,
    under the wrapper's own name, and adapter weights (lora_A, lora_B, inactive copies) never appear."""
    if not prefix:
        model = unwrap_adapters(model)
    seen: set[int] = set()

    def walk(module: nn.Module, name: str) -> Iterator[tuple[str, nn.Module]]:
        inner = _seen_through(module)
        while inner is not None:
            module, inner = inner, _seen_through(inner)
        if id(module) in seen:
            return
        seen.add(id(module))
        yield name, module
        for child_name, child in module.named_children():
            yield from walk(child, f"{name}.{child_name}" if name else child_name)

    yield from walk(model, prefix)


def _head_prefixes(model: nn.Module) -> tuple[set[str], set[int]]:
    """Parameter-name prefixes and output-embedding ids that make up the task head."""
    base = getattr(model, "base_model", model)
    head_ids: set[int] = set()
    if base is model:
        get_out = getattr(model, "get_output_embeddings", None)
        out = get_out() if callable(get_out) else None
        if out is not None:
            head_ids.add(id(out.weight))
        return set(), head_ids
    base_prefix = next((name for name, mod in plain_named_modules(model) if mod is base), "")
    return {base_prefix + "."}, head_ids


def is_decoder_lm(model: nn.Module) -> bool:
    """Whether `model` is a decoder-only language model: it generates (`can_generate()`, which masked LMs do not),
    predicts over its input vocabulary (an output embedding with one row per input-embedding row) and has no
    encoder (`config.is_encoder_decoder` false, which leaves T5 / mBART out). Read from the model's structure,
    never from a list of architectures, so a new *ForCausalLM is recognised the day it appears."""
    model = unwrap_adapters(model)
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return False
    can_generate = getattr(model, "can_generate", None)
    if not (callable(can_generate) and can_generate()):
        return False
    get_in, get_out = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    if not (callable(get_in) and callable(get_out)):
        return False
    inp, out = get_in(), get_out()
    w_in, w_out = getattr(inp, "weight", None), getattr(out, "weight", None)
    return (isinstance(w_in, nn.Parameter) and isinstance(w_out, nn.Parameter) and w_in.dim() == w_out.dim() == 2
            and w_out.shape[0] == w_in.shape[0])


def _in_block(target: PruneTarget) -> bool:
    return target.group.startswith("layer_")


def _module_weights(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, nn.Parameter]]:
    """(module name, module, attribute, weight) for every 2-D weight of a prunable module: `weight` of a
    Linear / Conv1D / Embedding, each `weight_ih_l<k>` / `weight_hh_l<k>` (and `_reverse`) of a recurrent layer."""
    prunable = prunable_module_types()
    for mod_name, module in plain_named_modules(model):
        if isinstance(module, RECURRENT_MODULES):
            weights = [(n, p) for n, p in module.named_parameters(recurse=False) if n.startswith("weight_")]
        elif isinstance(module, prunable):
            weights = [("weight", getattr(module, "weight", None))]
        else:
            continue
        for attr, weight in weights:
            if isinstance(weight, nn.Parameter) and weight.dim() == 2:
                yield mod_name, module, attr, weight


def find_targets(
    model: nn.Module,
    *,
    prune_embeddings: bool = True,
    prune_heads: bool = True,
    include: str | None = None,
    exclude: str | None = None,
    modules: str | None = None,
) -> list[PruneTarget]:
    """The prunable weights of `model` (or of the plain model inside a peft `PeftModel`), in `named_modules` order.

    `modules` names a module group of the transformer layers (`smc_trainer.engine.module_groups`, e.g. "qkv"):
    only the weights of those linears stay prunable.

    A decoder LM (`is_decoder_lm`) prunes only its blocks' weights unless `include` names the others (module
    docstring).

    Raises ValueError when a regex matches no candidate weight or when nothing is left to prune.
    """
    model = unwrap_adapters(model)
    include_regex = _compile(include, "prune_include")
    decoder_lm = is_decoder_lm(model)
    base_prefixes, head_ids = _head_prefixes(model)
    keep_dense = getattr(model, "keep_dense_weights", None)
    conv1d = prunable_module_types()[len(BASE_PRUNABLE_MODULES):]
    candidates: list[PruneTarget] = []
    seen: set[int] = set()
    for mod_name, module, attr, weight in _module_weights(model):
        if id(weight) in seen:
            continue
        seen.add(id(weight))
        name = f"{mod_name}.{attr}" if mod_name else attr
        is_head = id(weight) in head_ids or (bool(base_prefixes) and not name.startswith(tuple(base_prefixes)))
        if isinstance(module, nn.Embedding):  # an input embedding tied to the LM head is still an embedding
            group = "embeddings"
        elif is_head:
            group = "head"
        else:
            match = _LAYER_INDEX.search(name)
            group = f"layer_{int(match.group(1)):02d}" if match else "other"
        input_dim = 0 if conv1d and isinstance(module, conv1d) else 1
        candidates.append(PruneTarget(name, weight, group, input_dim))

    targets = [
        t
        for t in candidates
        if (prune_embeddings or t.group != "embeddings") and (prune_heads or t.group != "head")
        and not (keep_dense and re.search(keep_dense, t.name))
        and not (decoder_lm and not _in_block(t) and not (include_regex and include_regex.search(t.name)))
    ]
    targets = _apply_regex(targets, candidates, include, "prune_include", keep_matches=True)
    targets = _apply_regex(targets, candidates, exclude, "prune_exclude", keep_matches=False)
    if modules is not None:
        targets = _apply_regex(targets, candidates, module_group_regex(modules), "prune_modules", keep_matches=True)
    if not targets:
        raise UsageError(
            f"{type(model).__name__} has no prunable parameters (2-D weights of Linear, Conv1D or Embedding "
            "modules) left after --prune_embeddings/--prune_heads/--prune_include/--prune_exclude/--prune_modules"
        )
    return targets


def _apply_regex(
    targets: list[PruneTarget], candidates: list[PruneTarget], pattern: str | None, flag: str, keep_matches: bool
) -> list[PruneTarget]:
    regex = _compile(pattern, flag)
    if regex is None:
        return targets
    if not any(regex.search(t.name) for t in candidates):
        examples = ", ".join(t.name for t in candidates[:4])
        raise UsageError(f"--{flag} {pattern!r} matches no prunable parameter; names look like: {examples}, ...")
    return [t for t in targets if bool(regex.search(t.name)) == keep_matches]


def _compile(pattern: str | None, flag: str) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as err:
        raise UsageError(f"--{flag} is not a valid regular expression: {pattern!r} ({err})") from None
