"""Deprecated import path, kept for one release: use `smc_trainer.engine.targets` (see CHANGELOG.md)."""

import sys
import warnings

from smc_trainer.engine import targets as _moved

warnings.warn("smc_trainer.targets moved to smc_trainer.engine.targets; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved  # the very module: attributes, monkeypatching, isinstance agree
