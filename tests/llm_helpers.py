"""Tiny decoder LLMs and an offline byte-level tokenizer, for the causal-LM tests (no downloads).

Five architectures the causal-LM family must handle: Llama, Qwen2, Mistral, OPT and GPT-2, each with 2 decoder
blocks of width 32. `tiny_causal_lm(arch)` seeds torch first, so the same name and seed give the same weights.
The tokenizer maps every UTF-8 byte to one token (GPT-2's byte alphabet, no merges), so any text encodes, decodes
back exactly, and a test can count tokens by hand: one per byte.

    from llm_helpers import CAUSAL_ARCHS, byte_tokenizer, tiny_causal_lm
    model, tokenizer = tiny_causal_lm("llama"), byte_tokenizer()
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")
BYTES = 256
VOCAB = BYTES + len(SPECIAL_TOKENS)
HIDDEN = 32
LAYERS = 2
HEADS = 4
MLP = 64
POSITIONS = 256
CAUSAL_ARCHS = ("llama", "qwen2", "mistral", "opt", "gpt2")


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per UTF-8 byte (ids 0..255: GPT-2's byte alphabet sorted by code point), then <pad>, <s>, </s>;
    no BOS is added (GPT-2's convention), padding on the right."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet, key=lambda c: ord(c)))}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def _ids() -> dict[str, int]:
    return {"pad_token_id": BYTES, "bos_token_id": BYTES + 1, "eos_token_id": BYTES + 2}


def _config(arch: str):
    common = {"vocab_size": VOCAB, **_ids()}
    if arch in ("llama", "qwen2", "mistral"):
        cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[arch]
        return cls(hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                   num_key_value_heads=2, max_position_embeddings=POSITIONS, tie_word_embeddings=False, **common)
    if arch == "opt":
        return OPTConfig(hidden_size=HIDDEN, ffn_dim=MLP, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                         max_position_embeddings=POSITIONS, word_embed_proj_dim=HIDDEN, dropout=0.0,
                         attention_dropout=0.0, **common)
    if arch == "gpt2":
        return GPT2Config(n_embd=HIDDEN, n_inner=MLP, n_layer=LAYERS, n_head=HEADS, n_positions=POSITIONS,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    raise ValueError(f"arch must be one of {', '.join(CAUSAL_ARCHS)}; got {arch!r}")


MODEL_CLASSES = {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM, "mistral": MistralForCausalLM,
                 "opt": OPTForCausalLM, "gpt2": GPT2LMHeadModel}


def tiny_causal_lm(arch: str = "llama", seed: int = 0) -> PreTrainedModel:
    """A randomly initialised 2-block causal LM of `arch` over the byte tokenizer's vocabulary, in eval mode."""
    config = _config(arch)
    torch.manual_seed(seed)
    return MODEL_CLASSES[arch](config).eval()


def save_tiny_causal_lm(directory, arch: str = "llama", seed: int = 0) -> str:
    """A tiny causal LM and its tokenizer saved as a Hub-style folder (what `--model_name_or_path` takes)."""
    tiny_causal_lm(arch, seed).save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    return str(directory)
