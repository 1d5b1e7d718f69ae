"""Decoder LLMs (causal LMs) on SMC-Bench's tasks: multiple choice by the log-likelihood of each choice, arithmetic
by greedy generation with a few-shot prompt, and perplexity (`scoring`), from the recipes' rows (`prompts`).

Loading in bf16 / fp16 (`loading`: `load_causal_lm`, `is_causal_lm`), calibration and perplexity text
(`text_data`). The task family `causal_lm` (recipes `llm_*`, docs/llm.md): `build` (`family`) loads the rows
through the encoder recipes' loaders, the model in `--torch_dtype`, the calibration windows and the recovery
fine-tune's data (`data`), and hands the pipeline its own evaluator (`evaluation`). `redirect` refuses an encoder
recipe given a causal LM, naming its `llm_*` twin.
"""

from __future__ import annotations


def build(model_args, data_args, training_args, recipe):
    """The causal_lm family's TaskBundle (`smc_trainer.tasks.causal_lm.family.build`), imported on first use so
    that importing `scoring` or `prompts` stays light."""
    from smc_trainer.tasks.causal_lm.family import build as build_family

    return build_family(model_args, data_args, training_args, recipe)
