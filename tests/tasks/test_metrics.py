"""The packaged `evaluate` metrics: loaded offline through `evaluate.load`, equal to the direct computation."""

from __future__ import annotations

import ast
import random

import evaluate
import numpy as np
import pytest
import sacrebleu
from transformers import EvalPrediction

from smc_trainer.metrics import HERE, METRICS, SCRIPTS, argmax_accuracy, load_metric


def test_every_metric_loads_offline_through_evaluate():
    for name in METRICS:
        metric = load_metric(name)
        assert isinstance(metric, evaluate.EvaluationModule)
        assert load_metric(name) is metric  # loaded once per process


def test_unknown_metric_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown packaged metric 'bleu'; choose one of accuracy, sacrebleu"):
        load_metric("bleu")


def test_accuracy_equals_the_mean_of_exact_matches():
    rng = np.random.default_rng(0)
    predictions, references = rng.integers(0, 5, 997), rng.integers(0, 5, 997)
    result = load_metric("accuracy").compute(predictions=predictions, references=references)
    assert result == {"accuracy": float(np.mean(predictions == references))}
    assert load_metric("accuracy").compute(predictions=[], references=[]) == {"accuracy": 0.0}


def test_argmax_accuracy_reads_logits_and_tuples():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([1, 1, 1, 0])
    assert argmax_accuracy(EvalPrediction(logits, labels)) == {"accuracy": 0.75}
    assert argmax_accuracy(EvalPrediction((logits, np.zeros(4)), labels)) == {"accuracy": 0.75}


@pytest.mark.parametrize("tokenize", ["13a", "zh", "char"])
def test_sacrebleu_equals_sacrebleu_corpus_bleu(tokenize):
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "猫", "在", "垫子", "上"]
    rng = random.Random(tokenize)
    references = [" ".join(rng.choices(words, k=rng.randint(4, 12))) for _ in range(30)]
    hypotheses = [" ".join(w for w in r.split() if rng.random() > 0.3) for r in references]
    result = load_metric("sacrebleu").compute(predictions=hypotheses, references=references, tokenize=tokenize)
    direct = sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize)
    assert 0 < result["score"] < 100
    assert result["score"] == direct.score and result["counts"] == direct.counts and result["bp"] == direct.bp


def test_metric_scripts_are_self_contained():
    """evaluate copies each script into its module cache and imports it there: no imports of this package."""
    for script in SCRIPTS.values():
        tree = ast.parse((HERE / script).read_text(encoding="utf-8"))
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert "smc_trainer" not in imported and not any(
            isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree)), script
