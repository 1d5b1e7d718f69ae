"""Task families: schema adapters, synthetic data, tokenization that keeps every answer, the metric."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
from datasets import Dataset
from transformers import EvalPrediction, TrainingArguments

from smc_trainer.runs.recipes import load_recipe
from smc_trainer.tasks import get_task, task_names
from smc_trainer.tasks.multiple_choice import (
    compute_metrics,
    load_raw_splits,
    prepare_split,
    to_canonical,
    tokenize_batch,
)
from smc_trainer.tasks.quickstart import CATEGORIES, NUM_CHOICES, make_examples, quickstart_model_path, tiny_tokenizer
from smc_trainer.training.arguments import DataArguments, ModelArguments

LETTERS = ["A", "B", "C", "D", "E"]


def csqa_rows() -> dict[str, list]:
    """Three rows in the tau/commonsense_qa schema; the last one unlabeled like its test split."""
    texts = [["bank", "library", "department store", "mall", "new york"],
             ["ignore", "enforce", "authoritarian", "yell at", "avoid"],
             ["doctor", "bridge", "school", "park", "garden"]]
    return {
        "id": ["a", "b", "c"],
        "question": ["Where would you borrow a book?", "What do police do to laws?", "Where do kids learn?"],
        "question_concept": ["book", "laws", "kids"],
        "choices": [{"label": LETTERS, "text": t} for t in texts],
        "answerKey": ["B", "B", ""],
    }


@pytest.fixture
def train_args(tmp_path) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)


def test_registry_errors_list_valid_names():
    assert set(task_names()) >= {"multiple_choice", "quickstart"}
    assert hasattr(get_task("multiple_choice"), "build")
    families = "arithmetic, causal_lm, multiple_choice, protein, quickstart, translation"
    with pytest.raises(ValueError, match=f"task must be one of {families}; got 'nope'"):
        get_task("nope")


def test_csqa_adapter():
    canonical = to_canonical(Dataset.from_dict(csqa_rows()), where="csqa")
    assert canonical.column_names == ["question", "choices", "label"]
    assert canonical["label"] == [1, 1, -1]
    assert canonical[0]["choices"][1] == "library" and canonical[0]["question"] == "Where would you borrow a book?"


def test_unlabeled_rows_dropped_and_hidden_test_split_skipped(train_args):
    tok = tiny_tokenizer()
    data_args = DataArguments(max_seq_length=32)
    prepared = prepare_split(Dataset.from_dict(csqa_rows()), "validation", tok, data_args, train_args)
    assert len(prepared) == 2 and len(prepared[0]["input_ids"]) == 5
    hidden = Dataset.from_dict({k: v[2:] for k, v in csqa_rows().items()})
    assert prepare_split(hidden, "test", tok, data_args, train_args) is None


def test_original_csqa_jsonl_from_local_file(tmp_path):
    row = {"answerKey": "C", "id": "x", "question": {"question_concept": "c", "stem": "Pick the tool.",
           "choices": [{"label": L, "text": t} for L, t in zip(LETTERS, ["red", "dog", "hammer", "peru", "bus"])]}}
    path = tmp_path / "dev.jsonl"
    path.write_text("\n".join(json.dumps(row) for _ in range(3)), encoding="utf-8")
    data_args = DataArguments(validation_file=str(path))
    splits = load_raw_splits(data_args, ModelArguments(cache_dir=str(tmp_path / "cache")), recipe=None)
    assert splits["train"] is None and splits["test"] is None
    canonical = to_canonical(splits["validation"])
    assert canonical[0] == {"question": "Pick the tool.", "choices": ["red", "dog", "hammer", "peru", "bus"],
                            "label": 2}


def test_mixed_choice_counts_rejected():
    data = Dataset.from_dict({"question": ["a", "b"], "choices": [["x", "y"], ["x", "y", "z"]], "label": [0, 1]})
    with pytest.raises(ValueError, match="same number"):
        to_canonical(data)


def test_synthetic_data_is_deterministic_balanced_and_correct():
    a, b = make_examples(200, seed=0), make_examples(200, seed=0)
    assert a == b
    assert make_examples(200, seed=1) != a
    assert Counter(a["label"]) == {k: 200 // NUM_CHOICES for k in range(NUM_CHOICES)}
    words = [w for _, ws in CATEGORIES.values() for w in ws]
    assert len(words) == len(set(words)), "a word in two categories makes a question ambiguous"
    category_of = {w: c for c, (_, ws) in CATEGORIES.items() for w in ws}
    for question, choices, label in zip(a["question"], a["choices"], a["label"]):
        asked = [c for c, (phrase, _) in CATEGORIES.items() if phrase + "?" in question or phrase + "." in question]
        assert len(asked) == 1 and len(choices) == NUM_CHOICES
        assert [category_of[w] == asked[0] for w in choices] == [i == label for i in range(NUM_CHOICES)]


def test_long_question_never_drops_the_answer():
    tok = tiny_tokenizer()
    examples = {"question": ["which of these is a fruit " * 100], "choices": [["apple", "red", "dog", "saw", "car"]],
                "label": [0]}
    out = tokenize_batch(examples, tok, max_length=16)
    for choice, ids, types in zip(examples["choices"][0], out["input_ids"][0], out["token_type_ids"][0]):
        assert len(ids) == 16
        answer = [i for i, t in zip(ids, types) if t == 1]
        assert answer == tok(f"A: {choice}", add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
    assert out["label"] == [0]


def test_accuracy_metric():
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    metrics = compute_metrics(EvalPrediction(predictions=logits, label_ids=np.array([1, 0, 0, 1])))
    assert metrics == {"accuracy": 0.5}
    assert compute_metrics(EvalPrediction(predictions=(logits,), label_ids=np.array([1, 0, 2, 0]))) == {
        "accuracy": 1.0}


def test_quickstart_builds_tiny_model_offline(train_args):
    bundle = get_task("quickstart").build(
        ModelArguments(model_name_or_path="tiny"), DataArguments(num_synthetic_examples=20, max_eval_samples=10),
        train_args, load_recipe("quickstart"))
    assert "tiny" in bundle.model_source and bundle.chance_level == 0.2
    assert len(bundle.train_dataset) == 20 and len(bundle.eval_dataset) == 10 and len(bundle.test_dataset) == 10
    batch = bundle.data_collator([bundle.train_dataset[i] for i in range(4)])
    assert batch["input_ids"].shape[:2] == (4, NUM_CHOICES)
    out = bundle.model(**batch)
    assert out.logits.shape == (4, NUM_CHOICES)
    path = quickstart_model_path()
    assert path is None or isinstance(path, str)


def test_offline_dataset_error_names_the_dataset(monkeypatch, tmp_path):
    import smc_trainer.tasks.multiple_choice as mc

    def fail(*args, **kwargs):
        raise ConnectionError("no internet")

    monkeypatch.setattr(mc, "load_dataset", fail)
    with pytest.raises(OSError, match="'tau/commonsense_qa'.*--train_file"):
        load_raw_splits(DataArguments(dataset_name="tau/commonsense_qa"), ModelArguments(), SimpleNamespace())
