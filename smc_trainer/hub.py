"""Deprecated import path, kept for one release: use `smc_trainer.release.hub` (see CHANGELOG.md)."""

import sys
import warnings

from smc_trainer.release import hub as _moved

warnings.warn("smc_trainer.hub moved to smc_trainer.release.hub; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved  # the very module: attributes, monkeypatching, isinstance agree
