"""Answer accuracy: a predicted prefix equation is correct when its value over the problem's numbers matches
the reference answer (|value - answer| < 1e-4); an invalid equation is wrong, never an error.

`correct` and `total` are reported next to `accuracy`, so that cross-validation can pool folds exactly
(total correct over total problems, as SMC-Bench reports MAWPS and ASDiv-A).
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

import numpy as np
from transformers import EvalPrediction

from smc_trainer.errors import UsageError
from smc_trainer.tasks.arithmetic.equations import evaluate_prefix, is_correct, parse_numbers, tokenize
from smc_trainer.tasks.arithmetic.vocab import EquationVocab


def answer_accuracy(predictions: np.ndarray, numbers: np.ndarray, answers: np.ndarray,
                    vocab: EquationVocab) -> dict[str, float]:
    """Accuracy of predicted id sequences (N x L, negative = padding) given numbers (N x M, NaN = absent)."""
    correct = 0
    for ids, row_numbers, answer in zip(predictions, numbers, answers):
        values = [float(x) for x in row_numbers if not np.isnan(x)]
        correct += is_correct(evaluate_prefix(vocab.decode(ids), values), float(answer))
    total = len(answers)
    return {"accuracy": correct / total if total else 0.0, "correct": float(correct), "total": float(total)}


def most_frequent_equation_accuracy(train_rows: Iterable[Mapping[str, str]],
                                    test_rows: Iterable[Mapping[str, str]]) -> float:
    """The trivial baseline: the answer accuracy of always predicting the training split's most frequent equation
    (rows in the SVAMP authors' CSV layout: Numbers, Equation). A model below it has learnt nothing the data's
    equation counts do not give; ties go to the equation seen first."""
    counts = Counter(row["Equation"] for row in train_rows)
    if not counts:
        raise UsageError("the trivial baseline needs training rows; got none")
    frequent = tokenize(counts.most_common(1)[0][0])
    test = list(test_rows)
    correct = sum(is_correct(evaluate_prefix(frequent, parse_numbers(r["Numbers"])),
                             evaluate_prefix(tokenize(r["Equation"]), parse_numbers(r["Numbers"]))) for r in test)
    return correct / len(test) if test else 0.0


def fold_baseline(fold_dir: str) -> float:
    """`most_frequent_equation_accuracy` of a cross-validation fold's folder (train.csv, dev.csv)."""

    def rows(name: str) -> list[dict[str, str]]:
        with open(os.path.join(fold_dir, name), newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))

    return most_frequent_equation_accuracy(rows("train.csv"), rows("dev.csv"))


def make_compute_metrics(vocab: EquationVocab) -> Callable[[EvalPrediction], dict[str, float]]:
    """`compute_metrics` for the Trainer: predictions are the model's decoded ids, label_ids the triple
    (labels, label_numbers, label_answers) that the Trainer gathers by the model's label names."""

    def compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
        label_ids = eval_pred.label_ids
        if not isinstance(label_ids, (tuple, list)) or len(label_ids) != 3:
            raise UsageError("arithmetic metrics need label_ids = (labels, label_numbers, label_answers); leave "
                             "--label_names unset so the Trainer takes them from the model's forward")
        predictions = eval_pred.predictions
        if isinstance(predictions, (tuple, list)):
            predictions = predictions[0]
        _, numbers, answers = label_ids
        return answer_accuracy(np.asarray(predictions), np.asarray(numbers), np.asarray(answers), vocab)

    return compute_metrics
