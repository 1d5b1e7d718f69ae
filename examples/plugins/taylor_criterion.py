"""A plugin for smc-trainer: the first-order Taylor criterion (Molchanov et al. 2019), |w * g|^2 summed over batches.

Use it without editing the package:

    python run_smc.py --plugins examples/plugins/taylor_criterion.py --sparse_method omp_after --criterion taylor \
        --taylor_batches 4
    python run_smc.py sweep --plugins examples/plugins/taylor_criterion.py --methods gmp --criterion taylor ...

docs/extending.md walks through this file; tests/methods/test_plugins.py runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from smc_trainer.engine.criteria import Criterion, ScoringView, register_criterion
from smc_trainer.engine.hyperparameters import HyperParameters
from smc_trainer.engine.selection import tensor_scores


@dataclass
class TaylorConfig(HyperParameters):
    """The Taylor criterion's own hyper-parameters: flags --taylor_<field>."""

    prefix = "taylor_"

    batches: int = field(default=1, metadata={"help": "Taylor: training batches whose gradients are summed per event."})

    def validate(self) -> None:
        super().validate()
        self.require(self.batches >= 1, f"{self.param('batches')} must be >= 1; got {self.batches}")


@register_criterion("taylor", config=TaylorConfig)
class Taylor(Criterion):
    needs = "gradients"  # reads gradients of training batches when it scores: one-shot, iterative and gmp methods

    def scores(self, view: ScoringView):
        totals = {t.name: torch.zeros_like(t.param, dtype=torch.float32) for t in view.targets}
        for _ in view.gradient_batches(self.config.batches):  # one batch at a time, gradients in .grad
            for t in view.targets:
                if t.param.grad is not None:
                    totals[t.name] += (t.param.detach().float() * t.param.grad.float()) ** 2
        return {name: tensor_scores(total, within=view.mask_of(name)) for name, total in totals.items()}
