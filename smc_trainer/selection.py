"""Deprecated import path, kept for one release: use `smc_trainer.engine.selection` (see CHANGELOG.md)."""

import sys
import warnings

from smc_trainer.engine import selection as _moved

warnings.warn("smc_trainer.selection moved to smc_trainer.engine.selection; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved  # the very module: attributes, monkeypatching, isinstance agree
