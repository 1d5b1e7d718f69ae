"""Loading a decoder LM and its tokenizer (`AutoModelForCausalLM`, `AutoTokenizer`) in the dtype asked for, ready
for batched scoring: a tokenizer without a pad token pads with its EOS token, as lm-evaluation-harness does.

`is_causal_lm(config)` tells a causal-LM checkpoint from the others by its config alone (no weights loaded), through
transformers' own table of causal-LM classes."""

from __future__ import annotations

from typing import Any

from transformers.utils import logging

from smc_trainer.errors import UsageError

logger = logging.get_logger(__name__)

TORCH_DTYPES = ("auto", "bfloat16", "float16", "float32")


def check_torch_dtype(torch_dtype: str) -> None:
    """UsageError unless `torch_dtype` is one of TORCH_DTYPES ("auto": the checkpoint's own dtype)."""
    if torch_dtype not in TORCH_DTYPES:
        raise UsageError(f"torch_dtype must be one of {', '.join(TORCH_DTYPES)}; got {torch_dtype!r}")


def load_causal_lm(name_or_path: str, *, torch_dtype: str = "auto", trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) of a Hub id or a local folder; the dtype is checked before anything loads."""
    check_torch_dtype(torch_dtype)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    dtype = "auto" if torch_dtype == "auto" else getattr(torch, torch_dtype)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, trust_remote_code=trust_remote_code)
    ensure_pad_token(tokenizer, name_or_path)
    for config in (model.config, getattr(model, "generation_config", None)):  # batched generate() pads with it
        if config is not None and getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def ensure_pad_token(tokenizer: Any, name: str) -> None:
    """Give a tokenizer without a pad token its EOS token as pad (Llama's, GPT-2's); padded positions are masked
    out of every score, so which token fills them does not matter."""
    if tokenizer.pad_token is not None:
        return
    if tokenizer.eos_token is None:
        raise UsageError(f"the tokenizer of {name} has neither a pad token nor an EOS token to pad batches with")
    tokenizer.pad_token = tokenizer.eos_token
    logger.info(f"{name}: the tokenizer has no pad token; padding with its EOS token {tokenizer.eos_token!r}")


def is_causal_lm(config: Any) -> bool:
    """Whether a model of `config` is a causal LM: one of its `architectures` is a causal-LM class of transformers'
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES; without `architectures`, its `model_type` has a causal-LM class and is not an
    encoder-decoder or an encoder with a masked-LM head (BERT, RoBERTa and BART also have causal-LM classes, but a
    bare config of theirs is not a decoder LM)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    causal = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    architectures = getattr(config, "architectures", None)
    if architectures:
        names = {name for value in causal.values() for name in ((value,) if isinstance(value, str) else value)}
        return any(arch in names for arch in architectures)
    model_type = getattr(config, "model_type", None)
    return (model_type in causal and not getattr(config, "is_encoder_decoder", False)
            and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)
