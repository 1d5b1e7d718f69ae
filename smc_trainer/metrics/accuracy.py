"""Accuracy: the fraction of predictions equal to their reference (an `evaluate` metric script).

Loaded by `smc_trainer.metrics.load_metric("accuracy")`; self-contained, as evaluate copies the
script into its module cache and imports it from there.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Accuracy = (number of predictions equal to the reference) / (number of predictions)."
_KWARGS = """
predictions (list of int): predicted labels.
references (list of int): true labels.
Returns: {"accuracy": float in [0, 1]}; 0.0 for no examples.
"""


class Accuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        predictions, references = np.asarray(predictions), np.asarray(references)
        return {"accuracy": float((predictions == references).mean()) if len(predictions) else 0.0}
