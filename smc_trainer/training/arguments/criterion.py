"""The score axis: --criterion and oBERT's flags. The method checks the criterion (`validate_criterion`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from smc_trainer.training.arguments.roles import declare


@dataclass
class CriterionArguments:
    """The criterion that decides which weights go, and the optimal-BERT-surgeon (oBERT) settings."""

    criterion: str | None = declare(field(
        default=None,
        metadata={"help": "The score that decides which weights go: magnitude, random, snip, movement, obert, wanda, "
                  "sparsegpt (or a plugin's). Default: the method's own (omp_*/gmp/lth/lrr magnitude, random_* random, "
                  "snip snip, wanda_* wanda, sparsegpt_* sparsegpt). E.g. --sparse_method gmp --criterion movement, "
                  "--sparse_method omp_after --criterion obert, --sparse_method omp_after --criterion wanda (wanda "
                  "and sparsegpt: one-shot methods only, omp_before/omp_after)."},
    ), key="run", omit_at_default=True, dense_reset=True)
    obert_block_size: int = declare(field(
        default=50,
        metadata={"help": "oBERT: consecutive weights per Fisher block B (oBERT paper: 50; SMC-Bench's official "
                  "run: 1, a diagonal Fisher). The inverse Fisher takes N x B values for N prunable weights."},
    ), key="run", omit_at_default=True)
    obert_dampening: float = declare(field(
        default=1e-7, metadata={"help": "oBERT: dampening lambda of F = lambda I + mean g g^T (paper: 1e-7)."}
    ), key="run", omit_at_default=True)
    obert_num_grads: int = declare(field(
        default=64,
        metadata={"help": "oBERT: training-batch gradients per Fisher (oBERT paper: 1024); 0 = one full pass over "
                  "the training data (SMC-Bench's official run)."},
    ), key="run", omit_at_default=True)
    obert_update: bool = declare(field(
        default=True,
        metadata={"help": "oBERT: after each pruning step, update the kept weights of every block by the OBS formula "
                  "(the oBERT paper; SMC-Bench's official run did not). No effect with block size 1."},
    ), key="run", omit_at_default=True)
    obert_dtype: str = declare(field(
        default="float32",
        metadata={"help": "oBERT: dtype the inverse Fisher is stored in: float32, "
                  "bfloat16 or float16 (half the memory), float64 (tests)."},
    ), key="run", omit_at_default=True)
