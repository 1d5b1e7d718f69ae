"""The seq2seq checkpoint (mBART-cc25 by default, mBART-50 or any local copy by flag) and its tokenizer."""

from __future__ import annotations

from typing import Any

from transformers import AutoModelForSeq2SeqLM
from transformers.utils import logging

from smc_trainer.errors import UsageError
from smc_trainer.tasks.loading import (
    LOCAL_MODEL_HINT,
    checkpoint_name,
    hub_kwargs,
    load_tokenizer_and_config,
    offline_hint,
)

logger = logging.get_logger(__name__)


CONFIG_OVERRIDES = {"translation_dropout": "dropout", "translation_attention_dropout": "attention_dropout"}


def config_overrides(training_args: Any) -> dict[str, float]:
    """Dropout settings that replace the checkpoint's, by mBART config name (the paper: 0.3 and 0.1)."""
    return {attr: getattr(training_args, flag) for flag, attr in CONFIG_OVERRIDES.items()
            if getattr(training_args, flag) is not None}


def load_model_and_tokenizer(model_args: Any, training_args: Any) -> tuple[Any, Any, str]:
    """(model, tokenizer, where the weights came from) for `--model_name_or_path`, with the dropouts of
    `training_args` (--translation_dropout, --translation_attention_dropout)."""
    name, common = checkpoint_name(model_args), hub_kwargs(model_args)
    with offline_hint(name, f"{LOCAL_MODEL_HINT} (or the tokenizer's as --tokenizer_name)"):
        tokenizer, config = load_tokenizer_and_config(model_args, **config_overrides(training_args))
        if not getattr(config, "is_encoder_decoder", False):
            raise UsageError(f"translation needs an encoder-decoder model (e.g. mBART); {name!r} is a "
                             f"{config.model_type} model")
        if model_args.from_scratch:
            model, source = AutoModelForSeq2SeqLM.from_config(config), f"{name} config, random weights"
        else:
            model, source = AutoModelForSeq2SeqLM.from_pretrained(name, config=config, **common), f"{name} (pretrained)"
    tokenizer.padding_side = "right"  # mBART's shift_tokens_right reads the last non-pad label as the decoder start
    if tokenizer.pad_token_id is None:
        raise UsageError(f"the tokenizer of {name!r} has no pad token")
    return model, tokenizer, source
