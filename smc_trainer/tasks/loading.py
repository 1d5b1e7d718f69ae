"""Loading a task's checkpoint: the same first steps for every task family.

The id (`--model_name_or_path`, required), the Hub arguments (`--model_revision`, `--cache_dir`), the
tokenizer and config (`--tokenizer_name` / `--config_name` may point elsewhere), and one error when
the Hub cannot be reached that names the id and the local files to pass instead.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import AutoConfig, AutoTokenizer

from smc_trainer.errors import MissingFileError, OfflineError, UsageError
from smc_trainer.training.checkpoints import check_safetensors

LOCAL_MODEL_HINT = "a local folder with the model's config, weights and tokenizer as --model_name_or_path"


def checkpoint_name(model_args: Any) -> str:
    """`--model_name_or_path`, which every task needs (recipes set it)."""
    if not model_args.model_name_or_path:
        raise UsageError("--model_name_or_path is required (the recipe sets none)")
    return model_args.model_name_or_path


MODEL_FLAGS = ("model_name_or_path", "config_name", "tokenizer_name")


def check_model_sources(model_args: Any) -> None:
    """Refuse, before anything is loaded, a model flag naming a folder that does not exist (a string that is no
    Hub id) or a local folder whose safetensors weights are corrupt (a header check, no tensor is read)."""
    for flag in MODEL_FLAGS:
        name = getattr(model_args, flag, None)
        if name:
            check_model_source(str(name), flag)


def check_model_source(name: str, flag: str = "model_name_or_path") -> None:
    """One model flag's value: an existing folder with readable safetensors headers, a file (a config or
    tokenizer file), or a Hub id (the loader reports one that is neither cached nor reachable)."""
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        for weights in sorted(glob.glob(os.path.join(glob.escape(path), "*.safetensors"))):
            check_safetensors(weights, f"--{flag} {name}", "restore or re-download the model folder")
        return
    if not os.path.exists(path) and not looks_like_hub_id(name):
        raise MissingFileError(f"--{flag} {name!r}: no such folder (and it is not a Hub id of the form owner/name); "
                               "pass an existing model folder or a Hub id")


def looks_like_hub_id(name: str) -> bool:
    """`owner/name` or a bare legacy name, with the Hub's characters (huggingface_hub's own validation)."""
    if name.startswith((".", "/", "~")) or os.sep in name.replace("/", "", 1):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


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
