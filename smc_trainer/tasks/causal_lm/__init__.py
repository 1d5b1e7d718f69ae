"""Decoder language models (`AutoModelForCausalLM`) on SMC-Bench's tasks: loading in bf16 / fp16, calibration and
perplexity text, log-likelihood scoring of multiple choice and greedy generation for arithmetic."""
