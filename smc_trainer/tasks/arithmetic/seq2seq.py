"""The second model option for arithmetic reasoning: any `AutoModelForSeq2SeqLM` writing the prefix equation.

Given `--model_name_or_path` of an encoder-decoder checkpoint (T5, BART, mBART, ...), the task trains it to map
the problem text to its prefix equation, with the problem's numbers written out in both (`number0` -> `8`), the
usual text-to-text setup for math word problems. Evaluation generates (`--predict_with_generate true`), reads
the generated text as a space-separated prefix equation and scores it with the same rule as GTS: its value equals
the gold equation's value within 1e-4; text that is no valid equation counts as wrong. The model may write any
number, not only the problem's (GTS can only point at them).

The reference value of each problem is computed from the decoded label text, so encoding checks that the
tokenizer gives every gold equation back exactly (a tokenizer that cannot write a number would make the
metric wrong, and is refused naming the problem).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from datasets import Dataset
from transformers import EvalPrediction

from smc_trainer.errors import UsageError
from smc_trainer.metrics import decode_ids, generated_texts
from smc_trainer.tasks.arithmetic.data import COLUMNS, PLACEHOLDER, encode_split, gold_value
from smc_trainer.tasks.arithmetic.equations import evaluate_prefix, is_correct, tokenize


def number_text(value: float) -> str:
    """How a number is written for the model: `8` for 8.0, `0.25` for 0.25 (Python's shortest exact repr)."""
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def with_numbers(text: str, numbers: list[float]) -> str:
    """`text` with each placeholder `numberK` replaced by the K-th number (a missing K is an error)."""

    def value(match) -> str:
        k = int(match.group(1))
        if k >= len(numbers):
            raise UsageError(f"{text!r} names number{k}, but the problem has {len(numbers)} numbers")
        return number_text(numbers[k])

    return PLACEHOLDER.sub(value, text)


def equation_value(text: str) -> float | None:
    """The value of a prefix equation written with literal numbers (`- 8 2` -> 6.0); None if it is no equation."""
    return evaluate_prefix(tokenize(text), [])


def encode_batch(examples: dict[str, list], tokenizer: Any, max_length: int, split: str) -> dict[str, list]:
    """Source ids (the problem, numbers written out; truncated to `max_length`) and label ids (the equation)."""
    sources, targets = [], []
    for question, numbers_text, equation in zip(*(examples[c] for c in COLUMNS)):
        numbers, _ = gold_value(question, numbers_text, equation, split)
        sources.append(with_numbers(question, numbers))
        targets.append(with_numbers(equation, numbers))
    out = dict(tokenizer(sources, truncation=True, max_length=max_length))
    labels = tokenizer(text_target=targets)["input_ids"]  # never truncated: a cut equation would be a wrong label
    for target, decoded in zip(targets, tokenizer.batch_decode(labels, skip_special_tokens=True)):
        if tokenize(decoded) != tokenize(target):
            raise UsageError(f"{split} split: the tokenizer writes the equation {target!r} back as {decoded!r}; "
                             "the answer metric reads the decoded text, so choose a tokenizer that represents "
                             "these numbers and operators exactly")
    out["labels"] = labels
    return out


def prepare_split(dataset: Dataset | None, split: str, tokenizer: Any, data_args, training_args) -> Dataset | None:
    """Truncate (debug flags) and encode one raw split for the seq2seq model."""
    if dataset is None:
        return None
    return encode_split(dataset, split, encode_batch, {"tokenizer": tokenizer, "max_length": data_args.max_seq_length},
                        data_args, training_args, f"Encoding {split} (seq2seq)")


def answer_accuracy(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Fraction of generated equations whose value matches the gold equation's; `correct` and `total` pool folds."""
    correct = sum(is_correct(equation_value(h), equation_value(r)) for h, r in zip(hypotheses, references, strict=True))
    total = len(references)
    return {"accuracy": correct / total if total else 0.0, "correct": float(correct), "total": float(total)}


def make_compute_metrics(tokenizer: Any) -> Callable[[EvalPrediction], dict[str, float]]:
    """`compute_metrics` for generated equations (`--predict_with_generate true`)."""

    def compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
        hypotheses = generated_texts(eval_pred, tokenizer, "the seq2seq arithmetic metric")
        return answer_accuracy(hypotheses, decode_ids(tokenizer, eval_pred.label_ids))

    return compute_metrics
