"""What extends or names the method registry: --plugins, and the preset label run_smc.py sets."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import ClassVar

from smc_trainer.training.arguments.roles import declare


@dataclass
class ExtensionArguments:
    """Plugin files loaded before the flags are checked, and the name of the method preset a run came from."""

    help_group: ClassVar[str] = "Plugins"

    plugins: str | None = declare(field(
        default=None,
        metadata={"help": "Comma-separated Python files (or module names) registering your own criteria or methods "
                  "(@register_criterion / @register_method), imported before the flags are checked. See "
                  "docs/extending.md."},
    ), key="never")
    # internal state, not a flag (hidden from --help): set by run_smc.py when --sparse_method names a preset
    # (recipes/methods/*.yaml, e.g. obert, gmp_star): the preset's name, used to label results
    method_preset: str | None = declare(field(
        default=None, metadata={"help": argparse.SUPPRESS},
    ), key="run", omit_at_default=True, dense_reset=True)
