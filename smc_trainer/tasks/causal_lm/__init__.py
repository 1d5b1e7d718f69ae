"""Decoder language models (`AutoModelForCausalLM`) on SMC-Bench's tasks: loading in bf16 / fp16 (`loading`),
calibration and perplexity text (`text_data`), multiple choice by the log-likelihood of each choice, arithmetic by
greedy generation with a few-shot prompt, and perplexity (`scoring`), from the recipes' rows (`prompts`)."""
