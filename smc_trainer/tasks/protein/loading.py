"""Loading an ESM checkpoint (Hub id or local folder) into `EsmForThermostability`, with its tokenizer."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig
from transformers.utils import logging

from smc_trainer.errors import UsageError
from smc_trainer.tasks.loading import checkpoint_name, hub_kwargs, load_tokenizer_and_config, offline_hint
from smc_trainer.tasks.protein.data import ProteinSettings
from smc_trainer.tasks.protein.modeling import EsmForThermostability, EsmThermostabilityConfig

logger = logging.get_logger(__name__)

ESM_MODEL_TYPES = ("esm", EsmThermostabilityConfig.model_type)
NOT_COPIED = ("model_type", "architectures", "transformers_version", "id2label", "label2id", "num_labels")
LOCAL_FLAGS = ("--model_name_or_path (a local folder with the checkpoint's config.json, weights and tokenizer "
               "files); the protein data always come from --data_dir or --train_file/--validation_file/--test_file")


def thermostability_config(
    base: PretrainedConfig, tokenizer: Any, settings: ProteinSettings
) -> EsmThermostabilityConfig:
    """The checkpoint's ESM config plus the head: classes from --protein_labels, pooled-out ids from the tokenizer."""
    if base.model_type not in ESM_MODEL_TYPES:
        raise UsageError(f"--model_name_or_path must be an ESM checkpoint (model_type {' or '.join(ESM_MODEL_TYPES)}); "
                         f"got model_type {base.model_type!r}")
    values = {k: v for k, v in base.to_dict().items() if k not in NOT_COPIED}
    special = (tokenizer.cls_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.mask_token_id)
    values["pool_exclude_token_ids"] = sorted({i for i in special if i is not None})
    values["id2label"] = dict(enumerate(settings.labels))
    values["label2id"] = {name: i for i, name in enumerate(settings.labels)}
    if settings.dropout is not None:
        values["hidden_dropout_prob"] = values["attention_probs_dropout_prob"] = settings.dropout
    config = EsmThermostabilityConfig(**values)
    check_length(config, settings.max_residues)
    return config


def check_length(config: EsmThermostabilityConfig, max_residues: int) -> None:
    """Learned absolute positions cap the tokens at max_position_embeddings - pad_token_id - 1 (1024 for ESM-1b)."""
    if config.position_embedding_type != "absolute":
        return
    limit = config.max_position_embeddings - (config.pad_token_id or 0) - 1 - 2
    if max_residues > limit:
        raise UsageError(f"--protein_max_residues {max_residues} exceeds what this checkpoint's learned positions "
                         f"allow ({limit} residues + <cls> + <eos>); pass at most {limit}")


def load_model_and_tokenizer(model_args, settings: ProteinSettings) -> tuple[EsmForThermostability, Any, str]:
    """(model, tokenizer, where the weights came from) for --model_name_or_path (any HF ESM checkpoint)."""
    name, common = checkpoint_name(model_args), hub_kwargs(model_args)
    with offline_hint(name, LOCAL_FLAGS):
        tokenizer, base = load_tokenizer_and_config(model_args)
        config = thermostability_config(base, tokenizer, settings)
        if model_args.from_scratch:
            return EsmForThermostability(config), tokenizer, f"{name} config, random weights"
        model = EsmForThermostability.from_pretrained(name, config=config, **common)
    logger.info(f"protein: {name} loaded into EsmForThermostability ({config.num_hidden_layers} layers, hidden "
                f"{config.hidden_size}); new head {config.hidden_size}->{config.head_hidden_size}->{config.num_labels}")
    return model, tokenizer, f"{name} (pretrained)"
