"""Decoder LLMs (causal LMs) on SMC-Bench's tasks: multiple choice by the log-likelihood of each choice, arithmetic
by greedy generation with a few-shot prompt, and perplexity (`scoring`), from the recipes' rows (`prompts`)."""
