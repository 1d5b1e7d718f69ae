"""Calibration and perplexity text: local .txt / .jsonl files, and WikiText-2 / C4 through `datasets.load_dataset`
up to the network boundary (a recording stand-in returns a tiny Dataset; nothing is downloaded). Windows are checked
against the references' loop re-run here (`random.seed(seed)`, `randint(0, n - seq_len - 1)`) on the byte tokenizer,
whose tokens are the text's bytes."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import datasets
import pytest
import torch
from llm_helpers import byte_tokenizer

from smc_trainer.errors import UsageError
from smc_trainer.tasks.causal_lm.text_data import calibration_samples, load_text

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(40))  # 2 KB of ASCII


@pytest.fixture
def tokenizer():
    return byte_tokenizer()


@pytest.fixture
def hub(monkeypatch):
    """`datasets.load_dataset` replaced by a recorder returning `hub.rows` as a Dataset."""

    class Hub:
        calls: list[tuple[tuple, dict]] = []
        rows: list[str] = []

        def __call__(self, *args, **kwargs):
            self.calls.append((args, kwargs))
            return datasets.Dataset.from_dict({"text": list(self.rows)})

    recorder = Hub()
    recorder.calls = []
    monkeypatch.setattr(datasets, "load_dataset", recorder)
    return recorder


def reference_starts(n_tokens: int, n_samples: int, seq_len: int, seed: int) -> list[int]:
    rng = random.Random(seed)  # the references' random.seed(seed) stream
    return [rng.randint(0, n_tokens - seq_len - 1) for _ in range(n_samples)]


def test_txt_file_is_read_whole(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(TEXT, encoding="utf-8")
    assert load_text(str(path), "train") == TEXT
    assert load_text(str(path), "test") == TEXT  # a file is its own split


def test_jsonl_joins_the_text_fields_by_blank_lines(tmp_path):
    path = tmp_path / "calib.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(["a b", "c\nd", "e"])) + "\n\n")
    assert load_text(str(path), "train") == "a b\n\nc\nd\n\ne"


@pytest.mark.parametrize("line,reason", [('{"title": "x"}', 'no "text"'), ("not json", "not JSON"),
                                         ('{"text": 3}', 'no "text"')])
def test_jsonl_errors_name_the_file_and_line(tmp_path, line, reason):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + line + "\n")
    with pytest.raises(UsageError, match=reason) as err:
        load_text(str(path), "train")
    assert str(path) in str(err.value) and "line 2" in str(err.value)


def test_windows_are_the_references_windows_of_exactly_seq_len_tokens(tmp_path, tokenizer):
    path = tmp_path / "calib.txt"
    path.write_text(TEXT, encoding="utf-8")
    samples = calibration_samples(tokenizer, str(path), n_samples=6, seq_len=64, seed=3)
    assert len(samples) == 6
    starts = reference_starts(len(TEXT), 6, 64, seed=3)
    for sample, start in zip(samples, starts, strict=True):
        assert sample["input_ids"].shape == (64,) and sample["input_ids"].dtype == torch.long
        assert torch.equal(sample["attention_mask"], torch.ones(64, dtype=torch.long))
        assert tokenizer.decode(sample["input_ids"]) == TEXT[start:start + 64]
    again = calibration_samples(tokenizer, str(path), n_samples=6, seq_len=64, seed=3)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(samples, again, strict=True))
    other = calibration_samples(tokenizer, str(path), n_samples=6, seq_len=64, seed=4)
    assert any(not torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(samples, other, strict=True))


def test_a_text_shorter_than_a_window_names_the_file_its_tokens_and_seq_len(tmp_path, tokenizer):
    path = tmp_path / "short.txt"
    path.write_text("x" * 50, encoding="utf-8")
    with pytest.raises(UsageError) as err:
        calibration_samples(tokenizer, str(path), n_samples=2, seq_len=50)
    assert str(path) in str(err.value) and "50 tokens" in str(err.value) and "seq_len 50" in str(err.value)
    assert len(calibration_samples(tokenizer, str(path), n_samples=2, seq_len=49)) == 2  # 50 > 49: one start


@pytest.mark.parametrize("source,split,match", [("wikitext3", "train", "wikitext2, c4"),
                                                ("wikitext2", "dev", "train, validation, test"),
                                                ("c4", "test", "train, validation"),
                                                ("missing.txt", "train", "does not exist")])
def test_bad_sources_and_splits_are_refused_before_loading(hub, source, split, match):
    with pytest.raises(UsageError, match=match):
        load_text(source, split)
    assert hub.calls == []


def test_a_file_of_another_kind_is_refused(tmp_path):
    path = tmp_path / "calib.csv"
    path.write_text("text\nabc\n")
    with pytest.raises(UsageError, match=r"\.txt or \.jsonl"):
        load_text(str(path), "train")


def test_wikitext2_is_the_references_dataset_and_joins(hub):
    hub.rows = [" = Title = \n", "", " first line .\n"]
    assert load_text("wikitext2", "test") == "\n\n".join(hub.rows)
    assert hub.calls == [(("wikitext", "wikitext-2-raw-v1"), {"split": "test"})]
    assert load_text("wikitext2", "train") == " ".join(hub.rows)  # the references' calibration text
    assert hub.calls[-1] == (("wikitext", "wikitext-2-raw-v1"), {"split": "train"})


def test_wikitext2_calibration_windows_come_from_the_train_split(hub, tokenizer):
    hub.rows = [TEXT[:1000], TEXT[1000:]]
    samples = calibration_samples(tokenizer, "wikitext2", n_samples=3, seq_len=32, seed=0)
    assert hub.calls == [(("wikitext", "wikitext-2-raw-v1"), {"split": "train"})]
    text = " ".join(hub.rows)
    for sample, start in zip(samples, reference_starts(len(text), 3, 32, 0), strict=True):
        assert tokenizer.decode(sample["input_ids"]) == text[start:start + 32]


def test_c4_reads_the_references_shard_and_its_first_1100_validation_documents(hub):
    hub.rows = [f"doc{i}" for i in range(1102)]
    assert load_text("c4", "validation") == " ".join(hub.rows[:1100])
    assert hub.calls == [(("allenai/c4",), {"data_files": {"validation": "en/c4-validation.00000-of-00008.json.gz"},
                                            "split": "validation"})]


def test_c4_calibration_draws_documents_longer_than_a_window_as_the_references(hub, tokenizer):
    hub.rows = ["short", "x" * 20, TEXT[:300], "tiny", TEXT[500:900]]
    samples = calibration_samples(tokenizer, "c4", n_samples=5, seq_len=40, seed=1)
    assert hub.calls == [(("allenai/c4",), {"data_files": {"train": "en/c4-train.00000-of-01024.json.gz"},
                                            "split": "train"})]
    rng = random.Random(1)  # get_c4's loop, by hand
    for sample in samples:
        while True:
            doc = hub.rows[rng.randint(0, len(hub.rows) - 1)]
            if len(doc) > 40:
                break
        start = rng.randint(0, len(doc) - 40 - 1)
        assert tokenizer.decode(sample["input_ids"]) == doc[start:start + 40]
    hub.rows = ["short", "tiny"]
    with pytest.raises(UsageError, match="no document with more than seq_len 40"):
        calibration_samples(tokenizer, "c4", n_samples=1, seq_len=40)


def test_importing_the_module_does_not_import_datasets():
    code = "import sys, smc_trainer.tasks.causal_lm.text_data; print('datasets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
