"""Argument dataclasses: the single source of configuration, and of the CLI's `--help`.

`ModelArguments` and `DataArguments` live in `smc_trainer.training.task_arguments` and are re-exported here.

`SparseTrainingArguments` extends `transformers.TrainingArguments` with every sparse flag, so a
user (or a recipe YAML) configures training and sparsity in one place. Validation of the sparse
flags happens in `__post_init__`, before any model download or training starts.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields

from transformers import Seq2SeqTrainingArguments

from smc_trainer.engine.collapse import check_policy as check_collapse_policy
from smc_trainer.errors import MissingFileError, UsageError
from smc_trainer.training.parallel import check_parallel_support
from smc_trainer.training.task_arguments import DataArguments, ModelArguments

__all__ = ["DataArguments", "ModelArguments", "SparseTrainingArguments"]

DISTRIBUTIONS = ("global", "uniform", "erk", "owl")
DISTILL_SOURCES = ("none", "dense")  # or a path to a model folder
SELECT_ON = ("validation", "test")
PEFT_CHOICES = ("none", "lora")
LORA_RELEASES = ("merged", "adapter")
ADAPTER_GRADIENTS = ("exact", "straight_through")
LORA_FLAGS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "sparse_adapter", "lora_release",
              "lora_learning_rate", "adapter_gradient")


def _choices_error(flag: str, value: object, choices: tuple[str, ...] | list[str]) -> ValueError:
    return ValueError(f"--{flag} must be one of {', '.join(choices)}; got {value!r}")


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
            "gmp, rigl, set; wanda_before/after and sparsegpt_before/after are omp_before/after with --criterion "
            "wanda/sparsegpt (see README's method table)."
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
            "paper), uniform (same sparsity per layer), erk (Erdos-Renyi-Kernel) or owl (outlier-weighted: layers "
            "with more activation outliers keep more; --criterion wanda or sparsegpt only, see --owl_threshold/"
            "--owl_lambda)."
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
    prune_modules: str | None = field(
        default=None,
        metadata={
            "help": "Only these linears of the transformer layers are prunable (BERT/RoBERTa/ESM names): a combination "
            "of q, k, v, o (attention) and ffn, e.g. qkvo_ffn, qkv, qk (the paper's Table 1). Applied together with "
            "--prune_include/--prune_exclude."
        },
    )
    snip_batches: int = field(default=1, metadata={"help": "SNIP: training batches whose gradients are summed."})
    # ---- one-shot calibrated pruning and N:M patterns (docs/oneshot.md) ------------------------------
    sparsity_pattern: str = field(
        default="unstructured",
        metadata={"help": "unstructured, or N:M (e.g. 2:4, 4:8): every group of M consecutive weights along a "
                  "weight's input dimension keeps exactly N (then --sparsity must be 1 - N/M). One-shot methods "
                  "(omp/random before/after, snip, wanda_*, sparsegpt_*) and lth/lrr (rounds below 1 - N/M keep at "
                  "least N of every M, a last round exactly N); masks stay fixed while training."},
    )
    calibration_samples: int = field(
        default=128,
        metadata={"help": "wanda_*/sparsegpt_*: training examples (a seeded random subset, the same on every "
                  "process) run through the model to collect activation statistics."},
    )
    calibration_file: str | None = field(
        default=None,
        metadata={"help": "--criterion wanda/sparsegpt: calibrate on the examples of this file instead of the "
                  "training split (up to --calibration_samples of them, a seeded random subset). The task's own "
                  "training-file schema: arithmetic, a CSV with Question, Numbers, Equation; multiple choice and "
                  "quickstart, JSON / JSON Lines / CSV with question, choices, label (docs/oneshot.md)."},
    )
    wanda_compare: str = field(
        default="row",
        metadata={"help": "Wanda: compare scores within each output row (row, the paper's) at each layer's "
                  "--distribution budget, or across the whole layer / all layers with --distribution global (layer)."},
    )
    sparsegpt_blocksize: int = field(
        default=128, metadata={"help": "SparseGPT: columns per lazy-update block (paper: 128)."}
    )
    sparsegpt_dampening: float = field(
        default=0.01, metadata={"help": "SparseGPT: Hessian dampening, a fraction of its mean diagonal (paper: 0.01)."}
    )
    calibration_memory: str = field(
        default="block",
        metadata={"help": "SparseGPT: block (default) collects one block's (transformer layer's) Hessians per "
                  "forward pass, so memory holds that block's Hessians; layer collects one Hessian per pass (q, k, "
                  "v share one), holding only one at a time at the cost of one pass per layer group instead of one "
                  "per block. Masks and weights are identical."},
    )
    owl_threshold: float = field(
        default=5.0,
        metadata={"help": "OWL's M: a Wanda score above M x its layer's mean is an outlier (paper: 5)."},
    )
    owl_lambda: float = field(
        default=0.08,
        metadata={"help": "OWL's lambda: layer densities span target +- lambda around the mean (paper: 0.08)."},
    )
    export_semi_structured: bool = field(
        default=False,
        metadata={"help": "With --sparsity_pattern 2:4: record the release as 2:4 so load_sparse_pretrained("
                  "semi_structured=True) runs its linears through torch.sparse.to_sparse_semi_structured (a CUDA "
                  "GPU of compute capability >= 8.0; refused elsewhere)."},
    )
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
    gmp_anchor: str = field(
        default="start",
        metadata={"help": "GMP: where pruning events fall: start (every --prune_frequency steps from the first "
                  "pruning step) or absolute (at multiples of --prune_frequency, as the official code). Both add a "
                  "last event at --gmp_end that reaches the exact target."},
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
    drop_fraction_floor: float = field(
        default=0.0,
        metadata={"help": "RigL/SET: the value the cosine decay of --drop_fraction ends at (0, as RigL; the official "
                  "SMC-Bench code: 0.005)."},
    )
    init_method: str = field(
        default="omp_before",
        metadata={"help": "RigL/SET: method giving the initial mask: omp_before, random_before or snip."},
    )
    imp_rate: float = field(
        default=0.2, metadata={"help": "LTH/LRR: fraction of the remaining weights pruned per round (paper: 0.2)."}
    )
    imp_round: int | None = field(
        default=None,
        metadata={"help": "Set by the pipeline and sweeps on the LTH/LRR rounds of a --sparsity_pattern chain that lie "
                  "below the pattern's sparsity (the round's index), so those rounds pass the check that a patterned "
                  "run is at 1 - N/M. Not meant to be passed by hand."},
    )
    dense_cache_dir: str = field(
        default="smc_outputs/dense_cache",
        metadata={"help": "Where dense fine-tunes are cached and shared by after-methods, LTH/LRR and the dense row."},
    )
    ledger: str | None = field(
        default=None, metadata={"help": "Append a record of each finished run to this results ledger (JSON lines)."}
    )
    save_compressed: bool = field(
        default=False,
        metadata={"help": "Also write model.sparse.safetensors: the weights in smc-trainer's bitmask format (packed "
                  "bits + non-zero values), with its size against the dense file in the model card."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train from scratch even if output_dir holds checkpoints (files there may be replaced)."},
    )
    on_layer_collapse: str = field(
        default="warn",
        metadata={"help": "When a mask leaves a prunable layer with no weight or fewer than 1 in 100 of them (while "
                  "the model keeps 10x that share): warn (name the layers and the remedies in the log, the sparsity "
                  "report and the ledger) or error (stop the run)."},
    )
    # ---- the weights trained: --peft (smc_trainer/training/adapters, docs/peft.md) ------------------------------
    peft: str = field(
        default="none",
        metadata={"help": "Which weights are trained: none (all of them, full fine-tuning) or lora (the base model is "
                  "frozen and pruned by the method; LoRA adapters on its prunable linears and the task head are "
                  "trained). See docs/peft.md."},
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA: rank of the adapters."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA: alpha; the update is scaled by alpha / r."})
    lora_dropout: float = field(
        default=0.0,
        metadata={"help": "LoRA: dropout on the adapters' input. With --sparse_adapter, a non-zero dropout costs one "
                  "more weight-sized matrix product per layer and step."},
    )
    lora_target_modules: str | None = field(
        default=None,
        metadata={"help": "LoRA: comma-separated module names (e.g. query,value, or full names) that get adapters. "
                  "Default: every prunable Linear/Conv1D of the model outside the task head."},
    )
    lora_learning_rate: float | None = field(
        default=None,
        metadata={"help": "LoRA: learning rate of the adapters and head (LoRA usually wants ~10x a full fine-tune's). "
                  "Default: --learning_rate. Kept apart so that after-methods recover the dense fine-tune cached "
                  "at --learning_rate, the one full retraining starts from."},
    )
    sparse_adapter: bool = field(
        default=True,
        metadata={"help": "LoRA: mask each adapter's update by its base weight's mask, in training and in the merge, "
                  "so the merged model keeps every zero and computes what was trained. false: plain LoRA, re-masked "
                  "after the merge (measures what the mask costs)."},
    )
    adapter_gradient: str = field(
        default="exact",
        metadata={"help": "LoRA with --sparse_adapter: the gradient of A and B. exact: the masked update's true "
                  "gradient, which needs one more weight-sized product per layer and step ((g^T x) * mask). "
                  "straight_through: the gradient as if the mask were all ones (low-rank, plain LoRA's cost); "
                  "the forward pass and the merge stay masked exactly. See docs/peft.md for what each costs."},
    )
    lora_release: str = field(
        default="merged",
        metadata={"help": "LoRA: what a run saves as its model: merged (the adapters merged into a plain sparse "
                  "model, loads with from_pretrained) or adapter (adapter_config.json + adapter_model.safetensors "
                  "+ masks, loaded on the sparse base with smc_trainer.training.adapters.load_sparse_adapter)."},
    )
    select_on: str = field(
        default="validation",
        metadata={
            "help": "Split used for checkpoint selection: validation (correct protocol) or test (the original code's "
            "test-selected protocol, for parity only)."
        },
    )

    # ---- criterion axis, oBERT, distillation, LR rewinding, GMP*, presets, plugins (issue 13) -------------
    criterion: str | None = field(
        default=None,
        metadata={"help": "The score that decides which weights go: magnitude, random, snip, movement, obert, wanda, "
                  "sparsegpt (or a plugin's). Default: the method's own (omp_*/gmp/lth/lrr magnitude, random_* random, "
                  "snip snip, wanda_* wanda, sparsegpt_* sparsegpt). E.g. --sparse_method gmp --criterion movement, "
                  "--sparse_method omp_after --criterion obert, --sparse_method omp_after --criterion wanda (wanda "
                  "and sparsegpt: one-shot methods only, omp_before/omp_after)."},
    )
    obert_block_size: int = field(
        default=50,
        metadata={"help": "oBERT: consecutive weights per Fisher block B (oBERT paper: 50; SMC-Bench's official "
                  "run: 1, a diagonal Fisher). The inverse Fisher takes N x B values for N prunable weights."},
    )
    obert_dampening: float = field(
        default=1e-7, metadata={"help": "oBERT: dampening lambda of F = lambda I + mean g g^T (paper: 1e-7)."}
    )
    obert_num_grads: int = field(
        default=64,
        metadata={"help": "oBERT: training-batch gradients per Fisher (oBERT paper: 1024); 0 = one full pass over "
                  "the training data (SMC-Bench's official run)."},
    )
    obert_update: bool = field(
        default=True,
        metadata={"help": "oBERT: after each pruning step, update the kept weights of every block by the OBS formula "
                  "(the oBERT paper; SMC-Bench's official run did not). No effect with block size 1."},
    )
    obert_dtype: str = field(
        default="float32",
        metadata={"help": "oBERT: dtype the inverse Fisher is stored in: float32, "
                  "bfloat16 or float16 (half the memory), float64 (tests)."},
    )
    distill_teacher: str = field(
        default="none",
        metadata={"help": "Distillation from a teacher: none, dense (the cached dense fine-tune of this configuration, "
                  "trained first if missing) or a path to a fine-tuned model folder of the same architecture."},
    )
    distill_hardness: float = field(
        default=1.0,
        metadata={"help": "Distillation: weight h of the teacher term, loss = (1-h) task + h T^2 KL (oBERT: 1.0)."},
    )
    distill_temperature: float = field(
        default=2.0, metadata={"help": "Distillation: softmax temperature T of teacher and student (GMP*: 5.5)."}
    )
    lr_rewind: bool = field(
        default=False,
        metadata={"help": "Restart the LR schedule after every pruning event of a gradual method (gmp with any "
                  "criterion): each cycle runs --lr_scheduler_type (linear, cosine, constant) from the peak LR."},
    )
    lr_rewind_final_ratio: float = field(
        default=0.0,
        metadata={"help": "With --lr_rewind: LR at the end of each cycle as a fraction of the peak (oBERT's "
                  "8e-5 -> 8e-6: 0.1)."},
    )
    gmp_initial_fraction: float = field(
        default=0.0,
        metadata={"help": "GMP: the first pruning event jumps to this fraction of --sparsity in one shot, then the "
                  "cubic schedule continues from there (GMP*: a large first step; 0 = Zhu & Gupta)."},
    )
    gmp_window_per_halving: float = field(
        default=0.0,
        metadata={"help": "GMP: scale the pruning window with the target sparsity (GMP*'s sparsity-scaled "
                  "schedule): this fraction of training per halving of the kept weights, so the window ends at "
                  "min(--gmp_start + w * log2(1 / (1 - sparsity)), --gmp_end). 0 = the fixed window."},
    )
    plugins: str | None = field(
        default=None,
        metadata={"help": "Comma-separated Python files (or module names) registering your own criteria or methods "
                  "(@register_criterion / @register_method), imported before the flags are checked. See "
                  "docs/extending.md."},
    )
    method_preset: str | None = field(
        default=None,
        metadata={"help": "Set by run_smc.py when --sparse_method names a preset (recipes/methods/*.yaml, e.g. obert, "
                  "gmp_star): the preset's name, used to label results. Not meant to be passed by hand."},
    )

    def __post_init__(self) -> None:
        self.validate_sparse_flags()
        super().__post_init__()

    def validate_sparse_flags(self) -> None:
        """Reject bad sparse flags with the flag, the value and the valid choices, before anything runs."""
        from smc_trainer.engine.module_groups import parse_module_group
        from smc_trainer.methods import get_method_class, method_names
        from smc_trainer.plugins import load_plugins

        load_plugins(self.plugins)  # before the registries are read: a plugin may add the method or criterion

        if not 0.0 <= self.sparsity < 1.0:
            raise UsageError(f"--sparsity must be in [0, 1); got {self.sparsity!r}")
        if self.distribution not in DISTRIBUTIONS:
            raise _choices_error("distribution", self.distribution, DISTRIBUTIONS)
        if self.select_on not in SELECT_ON:
            raise _choices_error("select_on", self.select_on, SELECT_ON)
        check_collapse_policy(self.on_layer_collapse)
        if self.sparse_method not in method_names():
            raise _choices_error("sparse_method", self.sparse_method, method_names())
        if self.prune_modules is not None:
            parse_module_group(self.prune_modules)
        for flag in ("prune_include", "prune_exclude"):
            pattern = getattr(self, flag)
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise UsageError(f"--{flag} is not a valid regular expression: {pattern!r} ({err})") from None
        method = get_method_class(self.sparse_method)
        self._check_pattern_and_calibration(method)
        self._check_no_training(method)
        method.validate_args(self)
        method.validate_criterion(self)
        self.validate_training_variants(method)
        check_peft_flags(self)
        check_parallel_support(self)  # FSDP / DeepSpeed with a sparse method: refused before any model loads

    def validate_training_variants(self, method) -> None:
        """Distillation and LR rewinding: values, and the methods they make sense with."""
        if self.distill_teacher not in DISTILL_SOURCES and not os.path.isdir(self.distill_teacher):
            raise MissingFileError(f"--distill_teacher must be one of {', '.join(DISTILL_SOURCES)} or a model folder; "
                                   f"got {self.distill_teacher!r} (no such folder)")
        if self.distill_teacher != "none" and method.phase == "dense":
            raise UsageError(f"--distill_teacher {self.distill_teacher} distills into a sparse model; --sparse_method "
                             "dense is the cached dense fine-tune itself (pick a sparse method)")
        if not 0.0 <= self.distill_hardness <= 1.0:
            raise UsageError(f"--distill_hardness must be in [0, 1]; got {self.distill_hardness}")
        if not self.distill_temperature > 0.0:
            raise UsageError(f"--distill_temperature must be > 0; got {self.distill_temperature}")
        if self.lr_rewind and method.phase != "during":
            hint = " (lth/lrr restart the LR every round already)" if method.phase == "iterative" else ""
            raise UsageError(f"--lr_rewind restarts the LR at pruning events during training, which --sparse_method "
                             f"{self.sparse_method} ({method.phase}) does not have{hint}; use it with gmp")
        if not 0.0 <= self.lr_rewind_final_ratio <= 1.0:
            raise UsageError(f"--lr_rewind_final_ratio must be in [0, 1]; got {self.lr_rewind_final_ratio}")
        if self.lr_rewind:
            from smc_trainer.training.lr_rewind import SHAPES

            shape = getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type)
            if shape not in SHAPES:
                raise _choices_error("lr_scheduler_type (with --lr_rewind)", shape, SHAPES)


    def _check_no_training(self, method) -> None:
        """`--max_steps 0`: prune and evaluate without training, which only methods that prune once before
        training mean something with (before: the pretrained model; after: the cached dense fine-tune)."""
        if self.max_steps != 0 or method.phase in ("dense", "before", "after"):
            return
        from smc_trainer.methods import get_method_class, method_names

        able = [n for n in method_names() if get_method_class(n).phase in ("before", "after")]
        raise UsageError(f"--max_steps 0 prunes once and evaluates without training; --sparse_method "
                         f"{self.sparse_method} ({method.phase}) prunes during training or between retraining "
                         f"rounds, which never happen then; use one of {', '.join(able)}")

    def _check_calibration_memory(self, method) -> None:
        """--calibration_memory: a known value, and only where SparseGPT collects Hessians."""
        from smc_trainer.training.calibration import CALIBRATION_MEMORY

        if self.calibration_memory not in CALIBRATION_MEMORY:
            raise UsageError(f"--calibration_memory must be one of {', '.join(CALIBRATION_MEMORY)}; "
                             f"got {self.calibration_memory!r}")
        criterion = method.criterion_name(self)
        if self.calibration_memory != "block" and (criterion != "sparsegpt" or not method.calibrated(self)):
            raise UsageError(f"--calibration_memory {self.calibration_memory} sets how SparseGPT collects its layer "
                             f"Hessians; --sparse_method {self.sparse_method} with --criterion {criterion} collects "
                             "none: use it with --criterion sparsegpt (or sparsegpt_before/after)")

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
        if self.owl_threshold <= 0 or self.owl_lambda < 0:
            raise UsageError(f"--owl_threshold must be > 0 and --owl_lambda >= 0; got {self.owl_threshold}, "
                             f"{self.owl_lambda}")
        if self.export_semi_structured:
            if pattern is None or (pattern.n, pattern.m) != (2, 4):
                raise UsageError("--export_semi_structured needs --sparsity_pattern 2:4 (the only pattern sparse "
                                 f"tensor cores run); got --sparsity_pattern {self.sparsity_pattern}")
            reason = semi_structured_unavailable()
            if reason is not None:
                raise UsageError(f"--export_semi_structured: {reason}")


def check_peft_flags(args: SparseTrainingArguments) -> None:
    """Refuse LoRA flags without --peft lora, bad LoRA values, and methods that need to train the base weights."""
    import importlib.util

    from smc_trainer.methods import get_method_class

    if args.peft not in PEFT_CHOICES:
        raise UsageError(str(_choices_error("peft", args.peft, PEFT_CHOICES)))
    if args.peft == "none":
        defaults = {f.name: f.default for f in fields(SparseTrainingArguments) if f.name in LORA_FLAGS}
        given = [f"--{name} {getattr(args, name)}" for name in LORA_FLAGS if getattr(args, name) != defaults[name]]
        if given:
            raise UsageError(f"{', '.join(given)} configure LoRA, which is off (--peft none); add --peft lora or drop "
                             "them")
        return
    if args.lora_r < 1:
        raise UsageError(f"--lora_r must be >= 1; got {args.lora_r}")
    if args.lora_alpha <= 0:
        raise UsageError(f"--lora_alpha must be > 0; got {args.lora_alpha}")
    if args.lora_learning_rate is not None and not args.lora_learning_rate > 0:
        raise UsageError(f"--lora_learning_rate must be > 0; got {args.lora_learning_rate}")
    if not 0.0 <= args.lora_dropout < 1.0:
        raise UsageError(f"--lora_dropout must be in [0, 1); got {args.lora_dropout}")
    if args.adapter_gradient not in ADAPTER_GRADIENTS:
        raise UsageError(str(_choices_error("adapter_gradient", args.adapter_gradient, ADAPTER_GRADIENTS)))
    if args.adapter_gradient != "exact" and not args.sparse_adapter:
        raise UsageError("--adapter_gradient straight_through is a choice for the masked adapters; with "
                         "--sparse_adapter false the adapters are plain LoRA and their gradient is exact already")
    if args.lora_release not in LORA_RELEASES:
        raise UsageError(str(_choices_error("lora_release", args.lora_release, LORA_RELEASES)))
    if args.lora_release == "adapter" and not args.sparse_adapter:
        raise UsageError("--lora_release adapter needs --sparse_adapter true: a plain adapter re-masked after the "
                         "merge is no longer an adapter; release the merged model (--lora_release merged)")
    refusal = get_method_class(args.sparse_method).lora_refusal(args)
    if refusal:
        raise UsageError(refusal)
    if importlib.util.find_spec("peft") is None:
        raise UsageError("--peft lora needs the peft package: pip install 'smc-trainer[peft]'")
