"""Deprecated import path, kept for one release: use `smc_trainer.runs.pipeline` (see CHANGELOG.md)."""

import sys
import warnings

from smc_trainer.runs import pipeline as _moved

warnings.warn("smc_trainer.pipeline moved to smc_trainer.runs.pipeline; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved  # the very module: attributes, monkeypatching, isinstance agree
