"""Tiny Hugging Face models built from configs (no downloads), for fast tests.

Every model has a few hundred weights per layer and a vocabulary of 64-100 tokens. `make_tiny(name)`
seeds torch first, so the same name and seed always give the same weights.

    from tiny_models import make_tiny, MODEL_NAMES
    model = make_tiny("roberta")
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import (
    BertConfig,
    BertForMultipleChoice,
    BertForSequenceClassification,
    EsmConfig,
    EsmForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    MBartConfig,
    MBartForConditionalGeneration,
    RobertaConfig,
    RobertaForMultipleChoice,
    T5Config,
    T5ForConditionalGeneration,
)

VOCAB = 64
HIDDEN = 16
LAYERS = 2
HEADS = 2
FFN = 32
POSITIONS = 40


def _bert_config(**kw) -> BertConfig:
    return BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                      intermediate_size=FFN, max_position_embeddings=POSITIONS, type_vocab_size=2, pad_token_id=0,
                      num_labels=2, **kw)


def tiny_bert_cls() -> BertForSequenceClassification:
    return BertForSequenceClassification(_bert_config())


def tiny_bert_mc() -> BertForMultipleChoice:
    return BertForMultipleChoice(_bert_config())


def tiny_roberta_mc() -> RobertaForMultipleChoice:
    cfg = RobertaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                        intermediate_size=FFN, max_position_embeddings=POSITIONS, type_vocab_size=1, pad_token_id=1,
                        bos_token_id=0, eos_token_id=2)
    return RobertaForMultipleChoice(cfg)


def _gpt2_config(**kw) -> GPT2Config:
    return GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=FFN,
                      n_positions=POSITIONS, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1, **kw)


def tiny_gpt2_cls() -> GPT2ForSequenceClassification:
    return GPT2ForSequenceClassification(_gpt2_config(num_labels=2, pad_token_id=0))


def tiny_gpt2_lm() -> GPT2LMHeadModel:
    return GPT2LMHeadModel(_gpt2_config(tie_word_embeddings=True))


def _t5_config(**kw) -> T5Config:
    return T5Config(vocab_size=VOCAB, d_model=HIDDEN, d_kv=8, d_ff=FFN, num_layers=1, num_decoder_layers=1,
                    num_heads=HEADS, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, **kw)


def tiny_t5() -> T5ForConditionalGeneration:
    """T5 with tied input/output embeddings (`shared` is `lm_head`; transformers 5 always ties T5)."""
    return T5ForConditionalGeneration(_t5_config())


def tiny_mbart() -> MBartForConditionalGeneration:
    cfg = MBartConfig(vocab_size=VOCAB, d_model=HIDDEN, encoder_layers=1, decoder_layers=1,
                      encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FFN,
                      decoder_ffn_dim=FFN, max_position_embeddings=POSITIONS, pad_token_id=1, bos_token_id=0,
                      eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2)
    return MBartForConditionalGeneration(cfg)


def tiny_esm() -> EsmForSequenceClassification:
    cfg = EsmConfig(vocab_size=33, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                    intermediate_size=FFN, max_position_embeddings=POSITIONS, pad_token_id=1, mask_token_id=32,
                    num_labels=2, position_embedding_type="absolute")
    return EsmForSequenceClassification(cfg)


FACTORIES: dict[str, Callable[[], torch.nn.Module]] = {
    "bert": tiny_bert_cls,
    "bert_mc": tiny_bert_mc,
    "roberta": tiny_roberta_mc,
    "gpt2": tiny_gpt2_cls,
    "gpt2_lm": tiny_gpt2_lm,
    "t5": tiny_t5,
    "mbart": tiny_mbart,
    "esm": tiny_esm,
}
MODEL_NAMES = tuple(FACTORIES)
# Models whose task head is a separate classifier outside `model.base_model`.
CLASSIFIER_MODELS = ("bert", "bert_mc", "roberta", "gpt2", "esm")


def make_tiny(name: str, seed: int = 0) -> torch.nn.Module:
    """A freshly initialised tiny model; torch is seeded with `seed` first, so weights are reproducible."""
    if name not in FACTORIES:
        raise ValueError(f"unknown tiny model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    torch.manual_seed(seed)
    model = FACTORIES[name]()
    model.eval()
    return model


def dummy_inputs(name: str, batch: int = 2, seq: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    """Valid model inputs for `make_tiny(name)` (token ids avoid the special ids 0-2)."""
    gen = torch.Generator().manual_seed(seed)
    vocab = 33 if name == "esm" else VOCAB
    if name in ("bert_mc", "roberta"):
        ids = torch.randint(3, vocab, (batch, 3, seq), generator=gen)
    else:
        ids = torch.randint(3, vocab, (batch, seq), generator=gen)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if name in ("t5", "mbart"):
        inputs["decoder_input_ids"] = torch.randint(3, vocab, (batch, 4), generator=gen)
    return inputs
