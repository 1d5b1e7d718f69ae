"""Decoder LLMs (the `causal_lm` task family, recipes `llm_*`, docs/llm.md): dtype, prompts, calibration and
perplexity texts, few-shot count, recovery text.

Every flag here was added after ledgers and dense caches existed, so each is left out of every key while at its
default (`omit_at_default`); the flags that change what a dense model learns or how it is scored are part of the
dense-cache key, the calibration text only of the run key (the dense stage never calibrates). They mean something
to the `causal_lm` task only; `smc_trainer.runs.config` refuses them off their defaults for any other task.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

from smc_trainer.errors import MissingFileError, UsageError
from smc_trainer.training.arguments.roles import declare

TORCH_DTYPES = ("auto", "bfloat16", "float16", "float32")
LLM_TASKS = ("csqa", "winogrande", "race", "arithmetic", "perplexity")
NAMED_TEXTS = ("c4", "wikitext2")
TEXT_SUFFIXES = (".txt", ".jsonl")
NO_PERPLEXITY = "none"
DEFAULT_CALIBRATION_TEXT = "c4"  # SparseGPT's and Wanda's calibration data


@dataclass
class CausalLmArguments:
    """How a causal LM is loaded, prompted, calibrated and scored (`--recipe llm_*`)."""

    help_group: ClassVar[str] = "Causal LM (--recipe llm_*: loading, prompts, calibration text, perplexity)"

    torch_dtype: str = declare(field(
        default="auto",
        metadata={"choices": TORCH_DTYPES,
                  "help": "causal_lm: the dtype the model's weights are loaded in: auto (the checkpoint's), "
                  "bfloat16 (the llm_* recipes'), float16 or float32. Calibration statistics stay in float32."},
    ), key="dense", omit_at_default=True)
    llm_task: str | None = declare(field(
        default=None,
        metadata={"choices": LLM_TASKS,
                  "help": "causal_lm: how the recipe's rows are scored: csqa, winogrande, race (multiple choice by "
                  "the log-likelihood of each choice), arithmetic (greedy generation of the answer) or perplexity "
                  "(only --perplexity_text). Set by the llm_* recipes."},
    ), key="dense", omit_at_default=True)
    num_fewshot: int | None = declare(field(
        default=None,
        metadata={"help": "causal_lm: solved examples (from the training split, seeded by --seed) before each "
                  "arithmetic question. Default: 4 for arithmetic, 0 for multiple choice (which is scored "
                  "zero-shot only, as lm-evaluation-harness's default)."},
    ), key="dense", omit_at_default=True)
    calibration_text: str | None = declare(field(
        default=None,
        metadata={"help": "causal_lm, --criterion wanda/sparsegpt: the text the --calibration_samples windows of "
                  "--calibration_seq_len tokens are drawn from (seeded): c4 (allenai/c4 en, the references'), "
                  "wikitext2, or a local .txt / .jsonl file (a 'text' field per line). Default: c4."},
    ), key="run", omit_at_default=True, dense_reset=True)
    calibration_seq_len: int = declare(field(
        default=2048,
        metadata={"help": "causal_lm: tokens per calibration window (the references': 2048)."},
    ), key="run", omit_at_default=True, dense_reset=True)
    perplexity_text: str = declare(field(
        default="wikitext2",
        metadata={"help": "causal_lm: the text whose perplexity is reported beside the task metric "
                  "(<split>_perplexity): wikitext2 (its validation / test split), c4, a local .txt / .jsonl file, "
                  "or none to skip it."},
    ), key="dense", omit_at_default=True)
    perplexity_seq_len: int = declare(field(
        default=2048,
        metadata={"help": "causal_lm: tokens per perplexity window (non-overlapping, as SparseGPT and Wanda)."},
    ), key="dense", omit_at_default=True)
    train_text: str | None = declare(field(
        default=None,
        metadata={"help": "causal_lm recovery (--max_steps N): train with the plain language-model loss on "
                  "--max_seq_length windows of this text (wikitext2, c4, or a local .txt / .jsonl file) instead "
                  "of the task's training split (prompt tokens masked out of the loss)."},
    ), key="dense", omit_at_default=True)

    def _check_causal_lm_flags(self) -> None:
        """Values of the causal_lm flags (local files exist), before anything loads."""
        if self.torch_dtype not in TORCH_DTYPES:  # the parser refuses it too; the Python API does not
            raise UsageError(f"--torch_dtype must be one of {', '.join(TORCH_DTYPES)}; got {self.torch_dtype!r}")
        if self.llm_task is not None and self.llm_task not in LLM_TASKS:
            raise UsageError(f"--llm_task must be one of {', '.join(LLM_TASKS)}; got {self.llm_task!r}")
        for flag in ("calibration_seq_len", "perplexity_seq_len"):
            if getattr(self, flag) < 1:
                raise UsageError(f"--{flag} must be a positive number of tokens; got {getattr(self, flag)}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise UsageError(f"--num_fewshot must be 0 or more; got {self.num_fewshot}")
        if self.perplexity_text != NO_PERPLEXITY:
            check_text_source(self.perplexity_text, "perplexity_text")
        if self.train_text is not None:
            check_text_source(self.train_text, "train_text")
        if self.calibration_text is not None:
            # not refused for criteria that read no activations: one sweep's flags serve magnitude and wanda alike
            check_text_source(self.calibration_text, "calibration_text")
            if self.calibration_file is not None:
                raise UsageError("--calibration_file and --calibration_text both name calibration data; a causal "
                                 "LM calibrates on --calibration_text, pass only that")


def check_text_source(source: str, flag: str) -> None:
    """A named corpus (c4, wikitext2) or an existing local .txt / .jsonl file."""
    if source in NAMED_TEXTS:
        return
    if not source.lower().endswith(TEXT_SUFFIXES):
        extra = ", none" if flag == "perplexity_text" else ""
        raise UsageError(f"--{flag} must be {', '.join(NAMED_TEXTS)}{extra} or a local file ending in "
                         f"{' or '.join(TEXT_SUFFIXES)}; got {source!r}")
    if not os.path.isfile(source):
        raise MissingFileError(f"--{flag} {source!r} does not exist (or is not a file)")


def causal_lm_defaults() -> dict[str, object]:
    """Every causal_lm flag with its default (what another task family requires)."""
    import dataclasses

    return {f.name: f.default for f in dataclasses.fields(CausalLmArguments)}
