"""The score axis: --criterion and oBERT's flags. The method checks the criterion (`validate_criterion`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from smc_trainer.engine.criteria.obert import ObertConfig
from smc_trainer.training.arguments.generated import flag_mixin
from smc_trainer.training.arguments.roles import declare


@dataclass
class CriterionArguments:
    """The criterion that decides which weights go."""

    help_group: ClassVar[str] = "Criterion (the score that decides which weights go)"

    criterion: str | None = declare(field(
        default=None,
        metadata={"help": "The score that decides which weights go: magnitude, random, snip, movement, obert, wanda, "
                  "sparsegpt (or a plugin's). Default: the method's own (omp_*/gmp/lth/lrr magnitude, random_* random, "
                  "snip snip, wanda_* wanda, sparsegpt_* sparsegpt). E.g. --sparse_method gmp --criterion movement, "
                  "--sparse_method omp_after --criterion obert, --sparse_method omp_after --criterion wanda (wanda "
                  "and sparsegpt: one-shot methods only, omp_before/omp_after)."},
    ), key="run", omit_at_default=True, dense_reset=True)


# oBERT's flags, generated from its config
ObertArguments = flag_mixin(ObertConfig, "ObertArguments", module=__name__)
