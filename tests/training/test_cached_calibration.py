"""SparseGPT calibrated on cached block inputs (one run up to the first block, then 2 forwards per block) against
the whole-model passes that stop after each block: the same masks and weights bit for bit on CPU, on encoders and
decoders; and the number of block forwards each path costs."""

from __future__ import annotations

import pytest
import torch
from sparse_helpers import sparse_args
from tiny_models import make_tiny
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from smc_trainer.engine.masks import MaskSet
from smc_trainer.engine.sparsity import SparsityConfig
from smc_trainer.engine.targets import find_targets
from smc_trainer.methods import get_method_class
from smc_trainer.methods.base import SparseContext
from smc_trainer.training.calibration import HookCalibrator

LAYERS = 3
DECODER = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=LAYERS, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=64)


def _decoder(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**DECODER))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**DECODER))
    elif arch == "mistral":
        model = MistralForCausalLM(MistralConfig(**DECODER, sliding_window=None))
    else:
        model = OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=32, ffn_dim=48, num_hidden_layers=LAYERS,
                                         num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32))
    return model.eval()


def _model(arch: str) -> torch.nn.Module:
    return _decoder(arch) if arch in ("llama", "qwen2", "mistral", "opt") else make_tiny(arch)


def _batches(seed: int = 1) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 60, (10, 8), generator=gen)
    mask = torch.ones(10, 8, dtype=torch.long)
    mask[::3, 5:] = 0  # right padding, left out of the Hessians in both paths
    return [{"input_ids": ids[:5], "attention_mask": mask[:5]}, {"input_ids": ids[5:], "attention_mask": mask[5:]}]


def _layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    return next(m for m in model.modules() if isinstance(m, torch.nn.ModuleList))  # the transformer layers


def _prune(tmp_path, arch: str, cached: bool, memory: str = "block", heads: bool = True, **flags):
    """(model, masks, calls into the transformer layers) after sparsegpt_before; `heads`: the head is pruned too
    (a decoder LM's lm_head is dense unless named: --prune_include)."""
    model = _model(arch)
    targets = find_targets(model, prune_embeddings=False, prune_heads=heads, include="." if heads else None)
    layers = _layers(model)
    calls = [0]
    handles = [layer.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1)) for layer in layers]
    batches = _batches()
    args = sparse_args(tmp_path, "sparsegpt_before", flags.pop("sparsity", 0.5), distribution="uniform",
                       calibration_memory=memory, prune_embeddings=False, **flags)
    calibrator = HookCalibrator(model, lambda: iter(batches), cache_inputs=cached)
    ctx = SparseContext(targets, MaskSet(targets), SparsityConfig.from_flags(args), 0, lambda n: None,
                        calibrator=calibrator)
    masks = get_method_class("sparsegpt_before").from_args(args).initial_masks(ctx)
    for h in handles:
        h.remove()
    return model, masks, calls[0]


ARCHS = ["bert", "gpt2", "gpt2_lm", "llama", "qwen2", "mistral", "opt"]


@pytest.mark.parametrize("flags", [{}, {"sparsity_pattern": "2:4"}], ids=["50%", "2:4"])
@pytest.mark.parametrize("arch", ARCHS)
def test_cached_block_inputs_give_the_masks_and_weights_of_whole_model_passes(tmp_path, arch, flags):
    whole, whole_masks, _ = _prune(tmp_path, arch, cached=False, **dict(flags))
    cached, cached_masks, _ = _prune(tmp_path, arch, cached=True, **dict(flags))
    assert whole_masks.keys() == cached_masks.keys() and whole_masks
    for name, mask in whole_masks.items():
        assert torch.equal(mask, cached_masks[name]), name
    cached_state = cached.state_dict()
    for name, value in whole.state_dict().items():
        assert torch.equal(cached_state[name], value), name  # the same ops on the same inputs
    dense = _model(arch).state_dict()
    assert any(not torch.equal(v, dense[n]) for n, v in cached_state.items())  # it did prune


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_layer_memory_on_cached_inputs_equals_block_memory(tmp_path, arch):
    _, block_masks, _ = _prune(tmp_path, arch, cached=True, memory="block")
    _, layer_masks, _ = _prune(tmp_path, arch, cached=True, memory="layer")
    for name, mask in block_masks.items():
        assert torch.equal(mask, layer_masks[name]), name


def test_cached_path_costs_two_block_forwards_per_block_and_batch(tmp_path):
    """Calls into the L transformer layers, the head dense (as for an LLM). Per batch, the whole-model path enters
    layers 1..b in the pass of block b: L (L + 1) / 2; the cached path enters layer 1 once to capture its input
    (the call stops there), then runs each layer twice (Hessians, then the pruned outputs): 1 + 2 L. Both also run
    one ordering pass over the first batch (L calls). With a pruned head, each path adds one whole pass (L calls)."""
    batches, ordering = 2, LAYERS
    for heads, head_pass in ((False, 0), (True, LAYERS)):
        _, _, whole = _prune(tmp_path, "llama", cached=False, heads=heads)
        _, _, cached = _prune(tmp_path, "llama", cached=True, heads=heads)
        assert whole == ordering + batches * (LAYERS * (LAYERS + 1) // 2 + head_pass)
        assert cached == ordering + batches * (1 + 2 * LAYERS + head_pass)


def test_the_kv_cache_is_off_while_calibrating_and_restored(tmp_path):
    model = _decoder("llama")
    assert model.config.use_cache
    targets = find_targets(model, prune_embeddings=False)
    seen = []
    model.model.layers[1].register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw.get("past_key_values")), with_kwargs=True)
    calibrator = HookCalibrator(model, lambda: iter(_batches()))
    calibrator.sequential(targets, lambda group, hessian: None)
    assert seen and all(p is None for p in seen) and model.config.use_cache


def test_cache_beyond_its_budget_waits_on_the_cpu_and_gives_the_same_hessians(tmp_path):
    model = _decoder("llama")
    targets = find_targets(model, prune_embeddings=False)
    got = {}
    for budget in (2**30, 0):
        hessians: list[torch.Tensor] = []
        HookCalibrator(model, lambda: iter(_batches()), cache_bytes=budget).sequential(
            targets, lambda group, h, out=hessians: out.append(h.clone()))
        got[budget] = hessians
    assert len(got[0]) == len(got[2**30]) > 0
    for a, b in zip(got[0], got[2**30], strict=True):
        assert torch.equal(a, b)
