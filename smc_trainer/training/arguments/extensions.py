"""What extends or names the method registry: --plugins, and the preset label run_smc.py sets."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ExtensionArguments:
    """Plugin files loaded before the flags are checked, and the name of the method preset a run came from."""

    plugins: str | None = field(
        default=None,
        metadata={"help": "Comma-separated Python files (or module names) registering your own criteria or methods "
                  "(@register_criterion / @register_method), imported before the flags are checked. See "
                  "docs/extending.md."},
    )
    method_preset: str | None = field(
        default=None,
        metadata={"help": "Set by run_smc.py when --sparse_method names a preset (recipes/methods/*.yaml, e.g. obert, "
                  "gmp_star): the preset's name, used to label results. Not meant to be passed by hand."},
    )
