"""Loading a protein checkpoint (Hub id or local folder) with its tokenizer: ESM into `EsmForThermostability`,
BERT (TAPE's ProteinBert after `run_smc.py convert-tape`) into `BertForThermostability`."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig
from transformers.utils import logging

from smc_trainer.errors import UsageError
from smc_trainer.tasks.loading import checkpoint_name, hub_kwargs, load_tokenizer_and_config, offline_hint
from smc_trainer.tasks.protein.data import ProteinSettings
from smc_trainer.tasks.protein.modeling import (
    BertForThermostability,
    BertThermostabilityConfig,
    EsmForThermostability,
    EsmThermostabilityConfig,
)

logger = logging.get_logger(__name__)

ESM_MODEL_TYPES = ("esm", EsmThermostabilityConfig.model_type)
BERT_MODEL_TYPES = ("bert", BertThermostabilityConfig.model_type)
# the backbone's model_type -> (config class, model class)
BACKBONES = {**dict.fromkeys(ESM_MODEL_TYPES, (EsmThermostabilityConfig, EsmForThermostability)),
             **dict.fromkeys(BERT_MODEL_TYPES, (BertThermostabilityConfig, BertForThermostability))}
ThermostabilityConfig = EsmThermostabilityConfig | BertThermostabilityConfig
ThermostabilityModel = EsmForThermostability | BertForThermostability
NOT_COPIED = ("model_type", "architectures", "transformers_version", "id2label", "label2id", "num_labels")
LOCAL_FLAGS = ("--model_name_or_path (a local folder with the checkpoint's config.json, weights and tokenizer "
               "files); the protein data always come from --data_dir or --train_file/--validation_file/--test_file")


def thermostability_config(base: PretrainedConfig, tokenizer: Any, settings: ProteinSettings) -> ThermostabilityConfig:
    """The checkpoint's ESM or BERT config plus the head: classes from --protein_labels, pooled-out ids from the
    tokenizer."""
    if base.model_type not in BACKBONES:
        raise UsageError(f"--model_name_or_path must be an ESM checkpoint (model_type {' or '.join(ESM_MODEL_TYPES)}) "
                         f"or a BERT one (model_type {' or '.join(BERT_MODEL_TYPES)}, e.g. TAPE's ProteinBert after "
                         f"`run_smc.py convert-tape`); got model_type {base.model_type!r}")
    values = {k: v for k, v in base.to_dict().items() if k not in NOT_COPIED}
    special = (tokenizer.cls_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.mask_token_id)
    if base.model_type in BERT_MODEL_TYPES:  # TAPE ends a sequence with <sep>; ESM's list stays as it was
        special += (tokenizer.sep_token_id,)
    values["pool_exclude_token_ids"] = sorted({i for i in special if i is not None})
    values["id2label"] = dict(enumerate(settings.labels))
    values["label2id"] = {name: i for i, name in enumerate(settings.labels)}
    if settings.dropout is not None:
        values["hidden_dropout_prob"] = values["attention_probs_dropout_prob"] = settings.dropout
    config = BACKBONES[base.model_type][0](**values)
    check_length(config, settings.max_residues)
    return config


def check_length(config: ThermostabilityConfig, max_residues: int) -> None:
    """Learned absolute positions cap the tokens: ESM's start at pad_token_id + 1 (1024 tokens for ESM-1b), BERT's
    at 0; two of them go to <cls> and <eos>/<sep>."""
    if getattr(config, "position_embedding_type", "absolute") != "absolute":  # BertConfig has no such field
        return
    offset = (config.pad_token_id or 0) + 1 if isinstance(config, EsmThermostabilityConfig) else 0
    limit = config.max_position_embeddings - offset - 2
    if max_residues > limit:
        raise UsageError(f"--protein_max_residues {max_residues} exceeds what this checkpoint's learned positions "
                         f"allow ({limit} residues + <cls> + <eos>); pass at most {limit}")


def load_model_and_tokenizer(model_args, settings: ProteinSettings) -> tuple[ThermostabilityModel, Any, str]:
    """(model, tokenizer, where the weights came from) for --model_name_or_path (any HF ESM or BERT checkpoint)."""
    name, common = checkpoint_name(model_args), hub_kwargs(model_args)
    with offline_hint(name, LOCAL_FLAGS):
        tokenizer, base = load_tokenizer_and_config(model_args)
        config = thermostability_config(base, tokenizer, settings)
        model_cls = BACKBONES[base.model_type][1]
        if model_args.from_scratch:
            return model_cls(config), tokenizer, f"{name} config, random weights"
        model = model_cls.from_pretrained(name, config=config, **common)
    logger.info(f"protein: {name} loaded into {model_cls.__name__} ({config.num_hidden_layers} layers, hidden "
                f"{config.hidden_size}); new head {config.hidden_size}->{config.head_hidden_size}->{config.num_labels}")
    return model, tokenizer, f"{name} (pretrained)"
