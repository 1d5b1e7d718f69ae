"""When masks change: the flags of GMP and RigL/SET (generated from their configs) and LTH/LRR.

The methods check these values themselves (`validate_args`), so the mixins hold fields only.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import ClassVar

from smc_trainer.methods.gmp import GmpConfig
from smc_trainer.methods.iterative import ImpConfig
from smc_trainer.methods.rigl import DynamicConfig
from smc_trainer.training.arguments.generated import flag_mixin
from smc_trainer.training.arguments.roles import declare

# GMP's flags (GMP*'s too) are generated from its config, the one place that declares them
GmpArguments = flag_mixin(GmpConfig, "GmpArguments", module=__name__)


# RigL's and SET's flags, generated from their config
DynamicArguments = flag_mixin(DynamicConfig, "DynamicArguments", module=__name__)


# LTH's and LRR's flag (--imp_rate), generated from their config
ImpArguments = flag_mixin(ImpConfig, "ImpArguments", module=__name__)


@dataclass
class IterativeArguments(ImpArguments):
    """LTH/LRR: the rate of each pruning round (`ImpConfig`), and the round of a chain onto an N:M pattern."""

    help_group: ClassVar[str] = ImpConfig.title

    # internal state, not a flag (hidden from --help): set by the pipeline and sweeps on the LTH/LRR rounds of a
    # --sparsity_pattern chain that lie below the pattern's sparsity (the round's index), so those rounds pass the
    # check that a patterned run is at 1 - N/M
    imp_round: int | None = declare(field(
        default=None, metadata={"help": argparse.SUPPRESS},
    ), key="run", omit_at_default=True, dense_reset=True)
