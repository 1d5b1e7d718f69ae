"""The prunable set of decoder LMs: the linears (GPT-2's Conv1D) of the decoder blocks by default, embeddings and
lm_head dense (Wanda's and SparseGPT's choice); `include` opts them back in by name; every other model's set is the
one it always had. Expected sets are read off the decoder-block `ModuleList` here, not from `find_targets`."""

from __future__ import annotations

import pytest
from llm_helpers import CAUSAL_ARCHS, LAYERS, tiny_causal_lm
from tiny_models import MODEL_NAMES, make_tiny
from torch import nn
from transformers import BertConfig, BertForMaskedLM
from transformers.pytorch_utils import Conv1D

from smc_trainer.engine.sparsity import SparsityConfig
from smc_trainer.engine.targets import find_targets, is_decoder_lm


def block_linear_ids(model: nn.Module) -> set[int]:
    """Every 2-D Linear / Conv1D weight inside the decoder blocks (the ModuleList of num_hidden_layers modules)."""
    blocks = next(m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == LAYERS)
    return {id(m.weight) for m in blocks.modules() if isinstance(m, (nn.Linear, Conv1D)) and m.weight.dim() == 2}


def outside_ids(model: nn.Module) -> set[int]:
    """The input and output embeddings (and every other nn.Embedding: GPT-2's wpe, OPT's positions)."""
    out = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return out | {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}


@pytest.mark.parametrize("arch", CAUSAL_ARCHS)
def test_default_prunable_set_is_the_decoder_blocks_linears(arch):
    model = tiny_causal_lm(arch)
    assert is_decoder_lm(model)
    for targets in (find_targets(model), SparsityConfig(sparsity=0.5).targets(model)):  # engine default = flags'
        got = [id(t.param) for t in targets]
        assert len(got) == len(set(got)) and set(got) == block_linear_ids(model)
        assert not set(got) & outside_ids(model)
        assert all(t.group in {f"layer_{i:02d}" for i in range(LAYERS)} for t in targets)
    per_block = {"gpt2": 4, "opt": 6}.get(arch, 7)  # c_attn/c_proj/c_fc/c_proj; q,k,v,out,fc1,fc2; q,k,v,o,3 MLP
    assert len(targets) == per_block * LAYERS


@pytest.mark.parametrize("arch", CAUSAL_ARCHS)
def test_include_opts_the_lm_head_and_embeddings_in_by_name(arch):
    model = tiny_causal_lm(arch)
    blocks = block_linear_ids(model)
    head = model.get_output_embeddings().weight
    tied = head is model.get_input_embeddings().weight  # GPT-2 and OPT: lm_head is named by the embedding
    everything = find_targets(model, include=".")
    assert {id(t.param) for t in everything} == blocks | outside_ids(model)
    with_head = find_targets(model, include=r"lm_head|layers|\.h\.")
    assert {id(t.param) for t in with_head} == blocks | (set() if tied else {id(head)})
    if not tied:
        assert [t.group for t in with_head if t.param is head] == ["head"]
    # the group flags still remove what include names
    assert {id(t.param) for t in find_targets(model, prune_heads=False, prune_embeddings=False, include=".")} == blocks
    # a plain restriction stays a restriction
    first = find_targets(model, include=r"\.0\.")
    assert first and all(".0." in t.name for t in first) and {id(t.param) for t in first} < blocks


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_other_models_keep_their_prunable_set(name):
    """Encoders, seq2seq (T5, mBART: an lm_head, but an encoder) and classifiers: `include='.'` changes nothing."""
    model = make_tiny(name)
    assert is_decoder_lm(model) is (name == "gpt2_lm")
    if name != "gpt2_lm":
        assert [t.name for t in find_targets(model)] == [t.name for t in find_targets(model, include=".")]
        assert any(t.group == "embeddings" for t in find_targets(model))


def test_a_masked_lm_is_no_decoder_lm():
    model = BertForMaskedLM(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=16))
    assert model.get_output_embeddings() is not None and not is_decoder_lm(model)
    assert any(t.group == "embeddings" for t in find_targets(model))


def test_a_lora_wrapped_decoder_lm_keeps_the_rule():
    from peft import LoraConfig, get_peft_model

    model = tiny_causal_lm("llama")
    plain = [t.name for t in find_targets(model)]
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert is_decoder_lm(wrapped)
    assert [t.name for t in find_targets(wrapped)] == plain


def test_projections_outside_the_blocks_stay_dense_too():
    """OPT-350m's shape: embeddings narrower than the blocks, with project_in / project_out linears between."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    model = OPTForCausalLM(OPTConfig(vocab_size=50, hidden_size=32, word_embed_proj_dim=16, ffn_dim=32,
                                     num_hidden_layers=LAYERS, num_attention_heads=4, max_position_embeddings=32))
    projections = {id(model.model.decoder.project_in.weight), id(model.model.decoder.project_out.weight)}
    assert is_decoder_lm(model)
    assert {id(t.param) for t in find_targets(model)} == block_linear_ids(model)
    opted_in = find_targets(model, include=r"project_|layers")
    assert {id(t.param) for t in opted_in} == block_linear_ids(model) | projections
