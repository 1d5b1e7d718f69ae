"""Dense fine-tune cache: one dense fine-tune per configuration, shared by every method that needs it.

The key hashes everything that changes the dense fine-tune (recipe, model, data and training
arguments, seed, package version) and nothing that does not (output and logging paths, sparse
flags). An entry is trained in `<key>.partial` under an exclusive file lock, so two sweeps never
train the same key at once, an interrupted entry resumes from its checkpoints, and only a finished
entry is renamed into place (with a COMPLETE marker).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from transformers.utils import logging

from smc_trainer.training.arguments.roles import defaults_where, key_names, names_where
from smc_trainer.training.parallel import decided_by_main, wait_for_all
from smc_trainer.version import __version__

if TYPE_CHECKING:
    from smc_trainer.runs.run_config import RunConfig

logger = logging.get_logger(__name__)

INIT_WEIGHTS = "init_model.safetensors"  # the model before fine-tuning: LTH's rewind point
COMPLETE = "COMPLETE"
KEY_FILE = "cache_key.json"

# TrainingArguments' own fields that do not change what the dense fine-tune learns; our own flags declare their
# role where they are declared (smc_trainer.training.arguments.roles)
_VOLATILE_BASE = frozenset({
    "output_dir", "logging_dir", "run_name", "report_to", "disable_tqdm", "logging_steps", "logging_strategy",
    "logging_first_step", "logging_nan_inf_filter", "save_steps", "save_strategy", "save_total_limit",
    "save_only_model", "push_to_hub", "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo",
    "hub_always_push", "hub_revision", "resume_from_checkpoint", "dataloader_num_workers", "log_level",
    "log_level_replica", "print_config", "trackio_space_id", "project",
})


def _volatile(cls: type) -> set[str]:
    """Never part of a key: the base fields above and our flags declared `key="never"`."""
    return set(_VOLATILE_BASE) | set(names_where(cls, key="never"))


def _sparse_fields(cls: type) -> set[str]:
    """Part of the run key but not of the dense-cache key: our flags declared `key="run"`."""
    return set(names_where(cls, key="run"))


def _omitted_defaults(cls: type) -> dict[str, Any]:
    """Flags left out of a fingerprint while at their default (declared `omit_at_default=True`): flags added after
    ledgers existed, so every key written before them (and every run that does not use them) stays the same."""
    return defaults_where(cls, omit_at_default=True)


def config_fingerprint(config: RunConfig, *, include_sparse: bool = False) -> dict[str, Any]:
    """The JSON-able description of a run that cache keys and ledger keys are hashed from."""
    training = config.training_args.to_dict()
    cls = type(config.training_args)  # with a plugin's flags, a subclass (training.arguments.generated)
    # the task-model settings are keyed with the data flags, where they were declared when keys were first written
    data = {**dataclasses.asdict(config.data_args), **{k: training.pop(k) for k in names_where(cls, section="data")}}
    skip = _volatile(cls) | (set() if include_sparse else _sparse_fields(cls))
    training = {k: v for k, v in training.items() if k not in skip and not k.startswith("_")}
    omitted = _omitted_defaults(cls)
    training = {k: v for k, v in training.items() if k not in omitted or v != omitted[k]}
    renamed = key_names(cls)  # a renamed flag keeps its former name in keys
    training = {renamed.get(k, k): v for k, v in training.items()}
    return {
        "recipe": config.recipe.name,
        "recipe_args": {renamed.get(k, k): v for k, v in config.recipe.args.items()},
        "task": config.recipe.task,
        "model": dataclasses.asdict(config.model_args),
        "data": data,
        "training": training,
        "smc_trainer": ".".join(__version__.split(".")[:2]),
    }


def fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    blob = json.dumps(fingerprint, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


class DenseCache:
    """Directory of finished dense fine-tunes, keyed by configuration hash."""

    def __init__(self, root: str):
        self.root = root

    def key(self, config: RunConfig) -> str:
        return f"{config.recipe.name}-seed{config.training_args.seed}-{fingerprint_hash(config_fingerprint(config))}"

    def path(self, key: str) -> str:
        return os.path.join(self.root, key)

    def is_complete(self, key: str) -> bool:
        return os.path.isfile(os.path.join(self.path(key), COMPLETE))

    def get_or_train(self, key: str, train: Callable[[str], None], describe: RunConfig) -> str:
        """The finished entry for `key`, training it with `train(directory)` first if needed.

        Under multi-process training (DDP) every process calls this together: the main process alone
        takes the file lock and decides, all processes train the entry together (training is collective),
        and none returns before the main process has published the entry.
        """
        final = self.path(key)
        is_main = describe.training_args.process_index == 0
        os.makedirs(self.root, exist_ok=True)
        with self._lock(key) if is_main else contextlib.nullcontext():
            decision = decided_by_main(self._decide(key) if is_main else None)
            if decision == "stale":
                raise RuntimeError(f"{final} exists but is not a complete cache entry; move it away to retrain")
            if decision == "hit":
                logger.info(f"dense cache hit: {final}")
                return final
            partial = final + ".partial"
            logger.info(f"dense cache miss: training {key} in {partial}")
            train(partial)
            if is_main:
                with open(os.path.join(partial, KEY_FILE), "w", encoding="utf-8") as fh:
                    json.dump(config_fingerprint(describe), fh, indent=2, sort_keys=True, default=str)
                open(os.path.join(partial, COMPLETE), "w").close()
                os.rename(partial, final)
            wait_for_all()
        return final

    def _decide(self, key: str) -> str:
        """'hit' (complete), 'stale' (a non-entry sits at the final path) or 'train'."""
        if self.is_complete(key):
            return "hit"
        return "stale" if os.path.exists(self.path(key)) else "train"

    @contextlib.contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        """Exclusive file lock on `key`: two sweeps never train the same entry at once."""
        with open(os.path.join(self.root, f"{key}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
