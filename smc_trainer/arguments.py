"""Argument dataclasses: the single source of configuration, and of the CLI's `--help`.

`SparseTrainingArguments` extends `transformers.TrainingArguments` with every sparse flag, so a
user (or a recipe YAML) configures training and sparsity in one place. Validation of the sparse
flags happens in `__post_init__`, before any model download or training starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from transformers import Seq2SeqTrainingArguments

DISTRIBUTIONS = ("global", "uniform", "erk")
SELECT_ON = ("validation", "test")


def _choices_error(flag: str, value: object, choices: tuple[str, ...] | list[str]) -> ValueError:
    return ValueError(f"--{flag} must be one of {', '.join(choices)}; got {value!r}")


@dataclass
class ModelArguments:
    """Which checkpoint to start from and how to load it."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub id or local folder of the pretrained model. Default: the recipe's checkpoint."},
    )
    config_name: str | None = field(
        default=None, metadata={"help": "Config name or path, if not the same as model_name_or_path."}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer name or path, if not the same as model_name_or_path."}
    )
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the checkpoint."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded models and datasets are cached."})
    from_scratch: bool = field(
        default=False,
        metadata={"help": "Build the model from its config with random weights instead of loading pretrained ones."},
    )


@dataclass
class DataArguments:
    """Which benchmark row (recipe) to run and which data to feed it."""

    recipe: str = field(
        default="quickstart",
        metadata={
            "help": "Benchmark row to run: a name from recipes/ (e.g. csqa, quickstart) or a path to a recipe YAML. "
            "The recipe sets the task, checkpoint, dataset and the paper's hyper-parameters; flags override it."
        },
    )
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset id. Default: the recipe's."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset config name."})
    train_file: str | None = field(default=None, metadata={"help": "Local training file (json, jsonl or csv)."})
    validation_file: str | None = field(default=None, metadata={"help": "Local validation file (json, jsonl or csv)."})
    test_file: str | None = field(default=None, metadata={"help": "Local test file (json, jsonl or csv)."})
    max_seq_length: int = field(default=128, metadata={"help": "Maximum tokens per (question, choice) input."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set (debugging)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate evaluation sets (debugging)."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for datasets.map."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Recompute cached preprocessing."})
    num_synthetic_examples: int = field(
        default=2000, metadata={"help": "Quickstart only: how many synthetic training questions to generate."}
    )
    data_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of local data in the layout the recipe's task documents (e.g. the arithmetic "
                  "CSV folders); used instead of a Hub dataset."},
    )
    # ---- arithmetic (smc_trainer/tasks/arithmetic) -------------------------------------------------
    # ---- protein (smc_trainer/tasks/protein) -------------------------------------------------------
    # ---- translation (smc_trainer/tasks/translation) -----------------------------------------------


@dataclass
class SparseTrainingArguments(Seq2SeqTrainingArguments):
    """`TrainingArguments` plus the sparse-training flags (SMC-Bench methods, targets, schedules).

    It derives from `Seq2SeqTrainingArguments` (a `TrainingArguments` with the generation flags
    `--predict_with_generate`, `--generation_max_length`, `--generation_num_beams`), so generative
    tasks (translation, arithmetic equations) evaluate by decoding with the same trainer.
    """

    sparse_method: str = field(
        default="dense",
        metadata={
            "help": "Sparse algorithm: dense, omp_after, random_after, lth, lrr, omp_before, random_before, snip, "
            "gmp, rigl, set (see README's method table)."
        },
    )
    sparsity: float = field(
        default=0.0,
        metadata={"help": "Target fraction of prunable weights set to zero, in [0, 1). The paper grid is 1-0.8^k."},
    )
    distribution: str = field(
        default="global",
        metadata={
            "help": "How sparsity is spread over layers: global (one threshold over all prunable weights, as the "
            "paper), uniform (same sparsity per layer) or erk (Erdos-Renyi-Kernel)."
        },
    )
    prune_embeddings: bool = field(
        default=True, metadata={"help": "Include embedding matrices in the prunable set (the paper does)."}
    )
    prune_heads: bool = field(
        default=True, metadata={"help": "Include the task head (weights outside the base model) (the paper does)."}
    )
    prune_include: str | None = field(
        default=None, metadata={"help": "Regex: only parameters whose name matches are prunable (re.search)."}
    )
    prune_exclude: str | None = field(
        default=None, metadata={"help": "Regex: parameters whose name matches are never pruned (re.search)."}
    )
    snip_batches: int = field(default=1, metadata={"help": "SNIP: training batches whose gradients are summed."})
    gmp_start: float = field(
        default=0.1, metadata={"help": "GMP: fraction of training steps at which pruning starts (paper: 0.1)."}
    )
    gmp_end: float = field(
        default=0.8,
        metadata={"help": "GMP: fraction of training steps at which the target sparsity is reached (paper: 0.8)."},
    )
    prune_frequency: int = field(
        default=100, metadata={"help": "GMP: optimizer steps between pruning events (paper: 500-4000)."}
    )
    update_interval: int = field(
        default=100, metadata={"help": "RigL/SET: optimizer steps between mask updates (paper: GMP's frequency)."}
    )
    drop_fraction: float = field(
        default=0.5,
        metadata={"help": "RigL/SET: initial fraction of active weights swapped per update (cosine decay)."},
    )
    update_end: float = field(
        default=1.0, metadata={"help": "RigL/SET: fraction of training steps after which the mask is frozen."}
    )
    init_method: str = field(
        default="omp_before",
        metadata={"help": "RigL/SET: method giving the initial mask: omp_before, random_before or snip."},
    )
    imp_rate: float = field(
        default=0.2, metadata={"help": "LTH/LRR: fraction of the remaining weights pruned per round (paper: 0.2)."}
    )
    dense_cache_dir: str = field(
        default="smc_outputs/dense_cache",
        metadata={"help": "Where dense fine-tunes are cached and shared by after-methods, LTH/LRR and the dense row."},
    )
    ledger: str | None = field(
        default=None, metadata={"help": "Append a record of each finished run to this results ledger (JSON lines)."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train from scratch even if output_dir holds checkpoints (files there may be replaced)."},
    )
    select_on: str = field(
        default="validation",
        metadata={
            "help": "Split used for checkpoint selection: validation (correct protocol) or test (the original code's "
            "test-selected protocol, for parity only)."
        },
    )

    def __post_init__(self) -> None:
        self.validate_sparse_flags()
        super().__post_init__()

    def validate_sparse_flags(self) -> None:
        """Reject bad sparse flags with the flag, the value and the valid choices, before anything runs."""
        from smc_trainer.methods import get_method_class, method_names

        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"--sparsity must be in [0, 1); got {self.sparsity!r}")
        if self.distribution not in DISTRIBUTIONS:
            raise _choices_error("distribution", self.distribution, DISTRIBUTIONS)
        if self.select_on not in SELECT_ON:
            raise _choices_error("select_on", self.select_on, SELECT_ON)
        if self.sparse_method not in method_names():
            raise _choices_error("sparse_method", self.sparse_method, method_names())
        for flag in ("prune_include", "prune_exclude"):
            pattern = getattr(self, flag)
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ValueError(f"--{flag} is not a valid regular expression: {pattern!r} ({err})") from None
        get_method_class(self.sparse_method).validate_args(self)
