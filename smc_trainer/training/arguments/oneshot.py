"""One-shot calibrated pruning and N:M patterns (docs/oneshot.md): --sparsity_pattern, calibration, Wanda,
SparseGPT, OWL and the 2:4 export."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from smc_trainer.engine.criteria.sparsegpt import SparseGptConfig
from smc_trainer.engine.criteria.wanda import WandaConfig
from smc_trainer.errors import UsageError
from smc_trainer.training.arguments.generated import flag_mixin
from smc_trainer.training.arguments.roles import declare

# Wanda's and SparseGPT's flags, generated from their configs
WandaArguments = flag_mixin(WandaConfig, "WandaArguments", module=__name__)
SparseGptArguments = flag_mixin(SparseGptConfig, "SparseGptArguments", module=__name__)


@dataclass
class OneShotArguments:
    """N:M patterns and the flags of the calibrated criteria (wanda, sparsegpt) and of OWL."""

    help_group: ClassVar[str] = "N:M patterns, calibration and OWL"

    sparsity_pattern: str = declare(field(
        default="unstructured",
        metadata={"help": "unstructured, or N:M (e.g. 2:4, 4:8): every group of M consecutive weights along a "
                  "weight's input dimension keeps exactly N (then --sparsity must be 1 - N/M). One-shot methods "
                  "(omp/random before/after, snip, wanda_*, sparsegpt_*) and lth/lrr (rounds below 1 - N/M keep at "
                  "least N of every M, a last round exactly N); masks stay fixed while training."},
    ), key="run", dense_reset=True)
    calibration_samples: int = declare(field(
        default=128,
        metadata={"help": "wanda_*/sparsegpt_*: training examples (a seeded random subset, the same on every "
                  "process) run through the model to collect activation statistics."},
    ), key="run")
    calibration_cache_gb: float = declare(field(
        default=2.0,
        metadata={"help": "wanda_*/sparsegpt_*: the model runs once up to its first transformer layer and each layer "
                  "is then calibrated on cached inputs (2 layer forwards per layer instead of the ~L/2 whole-model "
                  "passes of the fallback); the cached hidden states stay on the model's device up to this many GiB, "
                  "beyond that they wait on the CPU between layers. Results are identical either way."},
    ), key="never")
    calibration_file: str | None = declare(field(
        default=None,
        metadata={"help": "--criterion wanda/sparsegpt: calibrate on the examples of this file instead of the "
                  "training split (up to --calibration_samples of them, a seeded random subset). The task's own "
                  "training-file schema: arithmetic, a CSV with Question, Numbers, Equation; multiple choice and "
                  "quickstart, JSON / JSON Lines / CSV with question, choices, label (docs/oneshot.md)."},
    ), key="run", omit_at_default=True, dense_reset=True)
    owl_threshold: float = declare(field(
        default=5.0,
        metadata={"help": "OWL's M: a Wanda score above M x its layer's mean is an outlier (paper: 5)."},
    ), key="run")
    owl_lambda: float = declare(field(
        default=0.08,
        metadata={"help": "OWL's lambda: layer densities span target +- lambda around the mean (paper: 0.08)."},
    ), key="run")
    export_semi_structured: bool = declare(field(
        default=False,
        metadata={"help": "With --sparsity_pattern 2:4: record the release as 2:4 so load_sparse_pretrained("
                  "semi_structured=True) runs its linears through torch.sparse.to_sparse_semi_structured (a CUDA "
                  "GPU of compute capability >= 8.0; refused elsewhere)."},
    ), key="run", dense_reset=True)

    def _check_pattern_and_calibration(self, method) -> None:
        """--sparsity_pattern, --distribution owl, the OWL flags and --export_semi_structured (docs/oneshot.md)."""
        from smc_trainer.engine.patterns import parse_pattern
        from smc_trainer.methods import get_method_class, method_names
        from smc_trainer.release.semi_structured import semi_structured_unavailable

        pattern = parse_pattern(self.sparsity_pattern)
        if pattern is not None:
            if method.pattern_refusal is not None:
                able = [n for n in method_names() if get_method_class(n).pattern_refusal is None]
                raise UsageError(f"--sparse_method {self.sparse_method} cannot keep --sparsity_pattern {pattern}: "
                                 f"{method.pattern_refusal}; methods that keep it: {', '.join(able)}")
            if self.imp_round is None and abs(self.sparsity - pattern.sparsity) > 1e-9:
                raise UsageError(f"--sparsity_pattern {pattern} keeps {pattern.n} of every {pattern.m} weights, "
                                 f"sparsity {pattern.sparsity:g}; got --sparsity {self.sparsity}")
            if self.distribution not in ("global", "uniform"):
                raise UsageError(f"--sparsity_pattern {pattern} puts every layer at {pattern.sparsity:g}; "
                                 f"--distribution {self.distribution} cannot apply (use global or uniform)")
        if self.imp_round is not None and (pattern is None or method.phase != "iterative"):
            raise UsageError(f"--imp_round {self.imp_round} marks a round of an lth/lrr chain onto a "
                             "--sparsity_pattern (set by the pipeline, not by hand); --sparse_method "
                             f"{self.sparse_method} with --sparsity_pattern {self.sparsity_pattern} has no such "
                             "rounds: leave it unset")
        if self.distribution == "owl" and not method.calibrated(self):
            criterion = method.criterion_name(self)
            raise UsageError(f"--distribution owl reads activation outliers from calibration data, which "
                             f"--sparse_method {self.sparse_method} with --criterion {criterion} does not collect; "
                             "use --criterion wanda or sparsegpt with a one-shot method (omp_before, omp_after, or "
                             "their aliases wanda_before/after, sparsegpt_before/after)")
        if self.calibration_file is not None:
            if not method.calibrated(self):
                raise UsageError(f"--calibration_file has no effect with --sparse_method {self.sparse_method} and "
                                 f"--criterion {method.criterion_name(self)}, which read no activations; use it with "
                                 "--criterion wanda or sparsegpt")
            from smc_trainer.training.calibration_file import check_calibration_file

            check_calibration_file(self.calibration_file)
        self._check_calibration_memory(method)
        if self.export_semi_structured:
            if pattern is None or (pattern.n, pattern.m) != (2, 4):
                raise UsageError("--export_semi_structured needs --sparsity_pattern 2:4 (the only pattern sparse "
                                 f"tensor cores run); got --sparsity_pattern {self.sparsity_pattern}")
            reason = semi_structured_unavailable()
            if reason is not None:
                raise UsageError(f"--export_semi_structured: {reason}")

    def _check_calibration_memory(self, method) -> None:
        """--calibration_memory only where SparseGPT collects Hessians (its config checks the value)."""
        criterion = method.criterion_name(self)
        if self.calibration_memory != "block" and (criterion != "sparsegpt" or not method.calibrated(self)):
            raise UsageError(f"--calibration_memory {self.calibration_memory} sets how SparseGPT collects its layer "
                             f"Hessians; --sparse_method {self.sparse_method} with --criterion {criterion} collects "
                             "none: use it with --criterion sparsegpt (or sparsegpt_before/after)")
