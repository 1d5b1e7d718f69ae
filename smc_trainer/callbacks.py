"""Deprecated import path, kept for one release: use `smc_trainer.training.callbacks` (see CHANGELOG.md)."""

import sys
import warnings

from smc_trainer.training import callbacks as _moved

warnings.warn("smc_trainer.callbacks moved to smc_trainer.training.callbacks; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved  # the very module: attributes, monkeypatching, isinstance agree
