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

from smc_trainer.errors import UsageError

HERE = Path(__file__).parent
SCRIPTS = {"accuracy": "accuracy.py", "sacrebleu": "corpus_sacrebleu.py"}
METRICS = tuple(SCRIPTS)


@cache
def load_metric(name: str) -> evaluate.EvaluationModule:
    """The packaged `evaluate` module `name` (one of METRICS), loaded once per process."""
    if name not in METRICS:
        raise UsageError(f"unknown packaged metric {name!r}; choose one of {', '.join(METRICS)}")
    return evaluate.load(str(HERE / SCRIPTS[name]), keep_in_memory=True)  # no cache files per compute


def model_predictions(eval_pred: Any) -> Any:
    """The model's first output (logits or generated ids) of an `EvalPrediction`, which may hold a tuple."""
    return eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions


def decode_ids(tokenizer: Any, ids: Any) -> list[str]:
    """Rows of token ids as stripped texts, special tokens dropped; negative ids (the evaluation loop's -100
    padding) read as the pad token."""
    ids = np.asarray(ids)
    return [t.strip() for t in tokenizer.batch_decode(np.where(ids < 0, tokenizer.pad_token_id, ids),
                                                      skip_special_tokens=True)]


def generated_texts(eval_pred: Any, tokenizer: Any, scored: str) -> list[str]:
    """The generated sequences of `eval_pred` as texts (`decode_ids`). `scored` names what is scored, for the
    error when the evaluation produced logits instead of generated ids."""
    predictions = np.asarray(model_predictions(eval_pred))
    if predictions.ndim != 2:
        raise UsageError(f"{scored} needs generated token ids: pass --predict_with_generate true")
    return decode_ids(tokenizer, predictions)


def argmax_accuracy(eval_pred: Any) -> dict[str, float]:
    """`compute_metrics` for classifiers and multiple choice: accuracy of the arg-max of the logits."""
    predictions = np.argmax(np.asarray(model_predictions(eval_pred)), axis=-1).reshape(-1)
    references = np.asarray(eval_pred.label_ids).reshape(-1)
    return {"accuracy": load_metric("accuracy").compute(predictions=predictions, references=references)["accuracy"]}
