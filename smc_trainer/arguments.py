"""Deprecated import path, kept for one release: use `smc_trainer.training.arguments` (see CHANGELOG.md)."""

import sys
import warnings

from smc_trainer.training import arguments as _moved

warnings.warn("smc_trainer.arguments moved to smc_trainer.training.arguments; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved  # the very module: attributes, monkeypatching, isinstance agree
