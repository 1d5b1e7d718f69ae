"""When masks change: the flags of GMP (and GMP*'s schedule), RigL/SET and LTH/LRR.

The methods check these values themselves (`validate_args`), so the mixins hold fields only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from smc_trainer.training.arguments.roles import declare


@dataclass
class GmpArguments:
    """GMP: the pruning window and the events in it."""

    gmp_start: float = declare(field(
        default=0.1, metadata={"help": "GMP: fraction of training steps at which pruning starts (paper: 0.1)."}
    ), key="run")
    gmp_end: float = declare(field(
        default=0.8,
        metadata={"help": "GMP: fraction of training steps at which the target sparsity is reached (paper: 0.8)."},
    ), key="run")
    prune_frequency: int = declare(field(
        default=100, metadata={"help": "GMP: optimizer steps between pruning events (paper: 500-4000)."}
    ), key="run")
    gmp_anchor: str = declare(field(
        default="start",
        metadata={"help": "GMP: where pruning events fall: start (every --prune_frequency steps from the first "
                  "pruning step) or absolute (at multiples of --prune_frequency, as the official code). Both add a "
                  "last event at --gmp_end that reaches the exact target."},
    ), key="run")


@dataclass
class DynamicArguments:
    """RigL/SET: mask updates during training and the initial mask."""

    update_interval: int = declare(field(
        default=100, metadata={"help": "RigL/SET: optimizer steps between mask updates (paper: GMP's frequency)."}
    ), key="run")
    drop_fraction: float = declare(field(
        default=0.5,
        metadata={"help": "RigL/SET: initial fraction of active weights swapped per update (cosine decay)."},
    ), key="run")
    update_end: float = declare(field(
        default=1.0, metadata={"help": "RigL/SET: fraction of training steps after which the mask is frozen."}
    ), key="run")
    drop_fraction_floor: float = declare(field(
        default=0.0,
        metadata={"help": "RigL/SET: the value the cosine decay of --drop_fraction ends at (0, as RigL; the official "
                  "SMC-Bench code: 0.005)."},
    ), key="run")
    init_method: str = declare(field(
        default="omp_before",
        metadata={"help": "RigL/SET: method giving the initial mask: omp_before, random_before or snip."},
    ), key="run")


@dataclass
class IterativeArguments:
    """LTH/LRR: the rate of each pruning round, and the round of a chain onto an N:M pattern."""

    imp_rate: float = declare(field(
        default=0.2, metadata={"help": "LTH/LRR: fraction of the remaining weights pruned per round (paper: 0.2)."}
    ), key="run")
    imp_round: int | None = declare(field(
        default=None,
        metadata={"help": "Set by the pipeline and sweeps on the LTH/LRR rounds of a --sparsity_pattern chain that lie "
                  "below the pattern's sparsity (the round's index), so those rounds pass the check that a patterned "
                  "run is at 1 - N/M. Not meant to be passed by hand."},
    ), key="run", omit_at_default=True, dense_reset=True)


@dataclass
class GmpStarArguments:
    """GMP*: a large first pruning step and a window scaled with the target sparsity."""

    gmp_initial_fraction: float = declare(field(
        default=0.0,
        metadata={"help": "GMP: the first pruning event jumps to this fraction of --sparsity in one shot, then the "
                  "cubic schedule continues from there (GMP*: a large first step; 0 = Zhu & Gupta)."},
    ), key="run", omit_at_default=True)
    gmp_window_per_halving: float = declare(field(
        default=0.0,
        metadata={"help": "GMP: scale the pruning window with the target sparsity (GMP*'s sparsity-scaled "
                  "schedule): this fraction of training per halving of the kept weights, so the window ends at "
                  "min(--gmp_start + w * log2(1 / (1 - sparsity)), --gmp_end). 0 = the fixed window."},
    ), key="run", omit_at_default=True)
