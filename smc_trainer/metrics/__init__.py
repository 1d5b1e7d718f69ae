"""The benchmark's metrics as `evaluate` modules that ship with the package, so they load offline.

`evaluate.load("accuracy")` or `evaluate.load("sacrebleu")` fetch their scripts from the Hub at run
time, which fails without a network and can change under a benchmark between runs. The two modules
here, `accuracy.py` and `corpus_sacrebleu.py` (not `sacrebleu.py`, which would shadow the package),
are ordinary `evaluate.Metric` scripts loaded through `evaluate.load(<path>)`: the same API
(`compute`, `add_batch`, `evaluate.combine`), pinned to this package's version. Their numbers
equal the Hub modules' (accuracy: mean of exact matches; sacreBLEU: `sacrebleu.corpus_bleu` with
its defaults).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import evaluate
import numpy as np

HERE = Path(__file__).parent
SCRIPTS = {"accuracy": "accuracy.py", "sacrebleu": "corpus_sacrebleu.py"}
METRICS = tuple(SCRIPTS)


@cache
def load_metric(name: str) -> evaluate.EvaluationModule:
    """The packaged `evaluate` module `name` (one of METRICS), loaded once per process."""
    if name not in METRICS:
        raise ValueError(f"unknown packaged metric {name!r}; choose one of {', '.join(METRICS)}")
    return evaluate.load(str(HERE / SCRIPTS[name]), keep_in_memory=True)  # no cache files per compute


def argmax_accuracy(eval_pred: Any) -> dict[str, float]:
    """`compute_metrics` for classifiers and multiple choice: accuracy of the arg-max of the logits."""
    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    predictions = np.argmax(np.asarray(logits), axis=-1).reshape(-1)
    references = np.asarray(eval_pred.label_ids).reshape(-1)
    return {"accuracy": load_metric("accuracy").compute(predictions=predictions, references=references)["accuracy"]}
