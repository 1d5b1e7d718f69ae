"""What a run was: its full configuration as JSON, and the `run_smc.py` command that reproduces it.

The command is the recipe plus the flags the run was configured with (`RunConfig.flags`: the user's
command line or config file, then the overrides a sweep or a pipeline stage applied), leaving out where
the results go (output, cache, ledger, Hub) and secrets. `reproduce_command` parses back into the same
configuration, which tests check.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from transformers.utils import logging

from smc_trainer.version import __version__

if TYPE_CHECKING:
    from smc_trainer.runs.run_config import RunConfig
    from smc_trainer.training.arguments import SparseTrainingArguments

logger = logging.get_logger(__name__)

# flags that say where results go or how to reach the Hub, not what is trained
NOT_REPRODUCED = frozenset({
    "output_dir", "logging_dir", "run_name", "overwrite_output_dir", "resume_from_checkpoint", "dense_cache_dir",
    "ledger", "push_to_hub", "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo", "hub_always_push",
    "hub_revision", "recipe",
})


def _cli_value(value: Any) -> list[str] | None:
    """`value` as command-line tokens, or None when a flag cannot express it (None)."""
    if value is None:
        return None
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, (list, tuple)):
        return [str(v.value if isinstance(v, enum.Enum) else v) for v in value] or None
    if isinstance(value, dict):
        return [json.dumps(value)]
    return [str(value)]


def _flag_name(token: str) -> str:
    return token[2:].split("=", 1)[0]


def _flag_groups(tokens: tuple[str, ...] | list[str]) -> dict[str, list[str]]:
    """`--name value...` groups in command-line order; a repeated flag keeps its last values, moved last (so the
    relative order of aliases such as --prune_embeddings / --no_prune_embeddings is kept: later flags win)."""
    groups: dict[str, list[str]] = {}
    name: str | None = None
    for token in tokens:
        if token.startswith("--"):
            name = _flag_name(token)
            groups.pop(name, None)
            groups[name] = [token[2:].split("=", 1)[1]] if "=" in token else []
        elif name is not None:
            groups[name].append(token)
    return groups


def override_flags(values: Mapping[str, Any]) -> tuple[str, ...]:
    """`--name value` tokens for flag values set in code (config files, sweeps, pipeline stages). A value of
    None is written as nothing (`--name` alone), so only flags whose None is their default should be None."""
    tokens: list[str] = []
    for name, value in values.items():
        if name in NOT_REPRODUCED:
            continue
        cli = _cli_value(value)
        if cli is not None:
            tokens.extend([f"--{name}", *cli])
    return tuple(tokens)


def reproduce_command(config: RunConfig) -> list[str] | None:
    """`python run_smc.py --recipe NAME --flag value ...`: the run again (add `--output_dir` to place it).

    Built from the flags the run was configured with (`RunConfig.flags`, overrides of sweeps and pipeline
    stages appended), minus where results go and secrets (NOT_REPRODUCED). No argument dataclass is
    constructed here: building `TrainingArguments` resets accelerate's process state, which must not happen on
    one rank of a distributed run. None when the configuration came from the Python API.
    """
    if config.flags is None:
        return None
    groups = _flag_groups(config.flags)
    kept = [tok for name, values in groups.items() if name not in NOT_REPRODUCED for tok in (f"--{name}", *values)]
    return ["python", "run_smc.py", "--recipe", config.recipe.cli_name, *kept]


def run_config_dict(run_config: RunConfig | SparseTrainingArguments) -> dict[str, Any]:
    """The JSON written as `smc_run_config.json`: version, command, recipe and the argument dataclasses
    (tokens redacted by `TrainingArguments.to_dict`). A bare `SparseTrainingArguments` (the Python API)
    gives only the training arguments."""
    if not hasattr(run_config, "training_args"):  # the training arguments alone (this layer sits below them)
        return {"smc_trainer_version": __version__, "command": None, "recipe": None, "model_args": None,
                "data_args": None, "training_args": run_config.to_dict()}
    command = reproduce_command(run_config)
    if command is None:
        logger.info("no reproduce command for a run configured in Python; its arguments are in the run config")
    return {
        "smc_trainer_version": __version__,
        "command": None if command is None else shlex.join(command),
        "recipe": dataclasses.asdict(run_config.recipe),
        "model_args": dataclasses.asdict(run_config.model_args),
        "data_args": dataclasses.asdict(run_config.data_args),
        "training_args": run_config.training_args.to_dict(),
    }
