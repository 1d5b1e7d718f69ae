"""Answer accuracy: a predicted prefix equation is correct when its value over the problem's numbers matches
the reference answer (|value - answer| < 1e-4); an invalid equation is wrong, never an error.

`correct` and `total` are reported next to `accuracy`, so that cross-validation can pool folds exactly
(total correct over total problems, as SMC-Bench reports MAWPS and ASDiv-A).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from transformers import EvalPrediction

from smc_trainer.errors import UsageError
from smc_trainer.tasks.arithmetic.equations import evaluate_prefix, is_correct
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
