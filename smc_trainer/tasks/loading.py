"""Loading a task's checkpoint: the same first steps for every task family.

The id (`--model_name_or_path`, required), the Hub arguments (`--model_revision`, `--cache_dir`), the
tokenizer and config (`--tokenizer_name` / `--config_name` may point elsewhere), and one error when
the Hub cannot be reached that names the id and the local files to pass instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from transformers import AutoConfig, AutoTokenizer

from smc_trainer.errors import OfflineError, UsageError

LOCAL_MODEL_HINT = "a local folder with the model's config, weights and tokenizer as --model_name_or_path"


def checkpoint_name(model_args: Any) -> str:
    """`--model_name_or_path`, which every task needs (recipes set it)."""
    if not model_args.model_name_or_path:
        raise UsageError("--model_name_or_path is required (the recipe sets none)")
    return model_args.model_name_or_path


def hub_kwargs(model_args: Any) -> dict[str, Any]:
    """Keyword arguments of every `from_pretrained` call: the revision and the cache folder."""
    return {"revision": model_args.model_revision, "cache_dir": model_args.cache_dir}


def load_tokenizer_and_config(model_args: Any, **config_overrides: Any) -> tuple[Any, Any]:
    """The tokenizer and config of `--model_name_or_path` (or of `--tokenizer_name` / `--config_name`)."""
    name, common = checkpoint_name(model_args), hub_kwargs(model_args)
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or name, **common)
    config = AutoConfig.from_pretrained(model_args.config_name or name, **common, **config_overrides)
    return tokenizer, config


@contextmanager
def offline_hint(name: str, local: str = LOCAL_MODEL_HINT) -> Iterator[None]:
    """Re-raise a loading OSError (offline, unknown id, missing files) naming the id and what to pass instead."""
    try:
        yield
    except OSError as err:
        raise OfflineError(f"could not load model {name!r} ({err}). Offline? Pass {local}.") from err
