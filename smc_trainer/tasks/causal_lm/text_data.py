"""Text for one-shot calibration and perplexity: a local file, WikiText-2 or C4, read as SparseGPT and Wanda read them.

Sources: a `.txt` file (its whole text), a `.jsonl` file (the "text" field of every line, joined by blank lines),
`"wikitext2"` (`load_dataset("wikitext", "wikitext-2-raw-v1")`: the train split joined by spaces, the others by
blank lines, as the references' calibration and perplexity code) or `"c4"` (`allenai/c4`, the first English
shard of the split: `en/c4-train.00000-of-01024.json.gz`, `en/c4-validation.00000-of-00008.json.gz`; validation text
is its first 1100 documents joined by spaces, as the references' perplexity). `datasets` is imported only for the
Hub sources.

Calibration windows are the references' `get_wikitext2` / `get_c4` loop with the same `random.seed` stream: a
window starts at `randint(0, n_tokens - seq_len - 1)`; for C4 each sample first draws documents until one has more
than `seq_len` tokens, then a window inside it. The same seed gives the same windows.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from smc_trainer.errors import UsageError

HUB_SOURCES = ("wikitext2", "c4")
FILE_SUFFIXES = (".txt", ".jsonl")
HUB_SPLITS = {"wikitext2": ("train", "validation", "test"), "c4": ("train", "validation")}
C4_SHARDS = {"train": "en/c4-train.00000-of-01024.json.gz", "validation": "en/c4-validation.00000-of-00008.json.gz"}
C4_VALIDATION_DOCUMENTS = 1100  # the references' perplexity text: the first 1100 validation documents
C4_DRAWS_PER_SAMPLE = 1000  # documents drawn for one sample before giving up (the references loop forever)


def load_text(source: str, split: str) -> str:
    """The text of `source` (module docstring); `split` picks the Hub split and is ignored for a local file."""
    if _is_file(source):
        return _file_text(source)
    documents = _hub_documents(source, split)
    if source == "wikitext2":
        return (" " if split == "train" else "\n\n").join(documents)
    return " ".join(documents if split == "train" else documents[:C4_VALIDATION_DOCUMENTS])


def calibration_samples(tokenizer: Any, source: str, *, n_samples: int = 128, seq_len: int = 2048,
                        seed: int = 0) -> list[dict[str, Tensor]]:
    """`n_samples` random windows of exactly `seq_len` tokens of `source`'s training text, each a dict of 1-D
    `input_ids` and `attention_mask` (all ones) of length `seq_len`; `torch.stack` them for a batch."""
    if n_samples < 1 or seq_len < 1:
        raise UsageError(f"n_samples and seq_len must be >= 1; got n_samples={n_samples}, seq_len={seq_len}")
    _check_source(source, "train")
    rng = random.Random(seed)
    if source == "c4":
        windows = _document_windows(tokenizer, _hub_documents("c4", "train"), n_samples, seq_len, rng)
    else:
        ids = _token_ids(tokenizer, load_text(source, "train"))
        _check_length(source, len(ids), seq_len)
        windows = [_window(ids, seq_len, rng) for _ in range(n_samples)]
    return [{"input_ids": w, "attention_mask": torch.ones_like(w)} for w in windows]


def _is_file(source: str) -> bool:
    return source.endswith(FILE_SUFFIXES) or os.path.isfile(source)


def _check_source(source: str, split: str) -> None:
    """UsageError for an unknown source or split, before anything is read or downloaded."""
    if _is_file(source):
        if not source.endswith(FILE_SUFFIXES):
            raise UsageError(f"text file {source!r} must end with {' or '.join(FILE_SUFFIXES)} (a .jsonl file holds "
                             "one JSON object with a \"text\" field per line)")
        if not os.path.isfile(source):
            raise UsageError(f"text file {source!r} does not exist")
        return
    if source not in HUB_SOURCES:
        raise UsageError(f"text source must be a .txt / .jsonl file or one of {', '.join(HUB_SOURCES)}; got {source!r}")
    if split not in HUB_SPLITS[source]:
        raise UsageError(f"{source} split must be one of {', '.join(HUB_SPLITS[source])}; got {split!r}")


def _file_text(path: str) -> str:
    _check_source(path, "train")
    with open(path, encoding="utf-8") as f:
        if path.endswith(".txt"):
            return f.read()
        texts = []
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UsageError(f"{path} line {number} is not JSON ({err.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise UsageError(f"{path} line {number} has no \"text\" string field")
            texts.append(row["text"])
    return "\n\n".join(texts)


def _hub_documents(source: str, split: str) -> list[str]:
    """The documents of a Hub source's split, through `datasets.load_dataset` (imported here, not at import)."""
    _check_source(source, split)
    import datasets

    if source == "wikitext2":
        rows = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
    else:
        rows = datasets.load_dataset("allenai/c4", data_files={split: C4_SHARDS[split]}, split=split)
    return list(rows["text"])


def _token_ids(tokenizer: Any, text: str) -> Tensor:
    """The token ids of `text` as the references tokenize it (the tokenizer's special tokens included)."""
    return torch.tensor(tokenizer(text, verbose=False)["input_ids"], dtype=torch.long)


def _check_length(source: str, n_tokens: int, seq_len: int) -> None:
    if n_tokens <= seq_len:
        raise UsageError(f"calibration text {source} has {n_tokens} tokens; a window of seq_len {seq_len} needs at "
                         f"least {seq_len + 1} (as the references draw it): use a longer text or a smaller seq_len")


def _window(ids: Tensor, seq_len: int, rng: random.Random) -> Tensor:
    start = rng.randint(0, len(ids) - seq_len - 1)
    return ids[start:start + seq_len].clone()


def _document_windows(tokenizer: Any, documents: Sequence[str], n_samples: int, seq_len: int,
                      rng: random.Random) -> list[Tensor]:
    """Per sample: draw documents until one has more than `seq_len` tokens, then a window inside it (get_c4)."""
    windows = []
    for _ in range(n_samples):
        for _ in range(C4_DRAWS_PER_SAMPLE):
            ids = _token_ids(tokenizer, documents[rng.randint(0, len(documents) - 1)])
            if len(ids) > seq_len:
                break
        else:
            raise UsageError(f"c4: no document with more than seq_len {seq_len} tokens in {C4_DRAWS_PER_SAMPLE} "
                             "draws; use a smaller seq_len")
        windows.append(_window(ids, seq_len, rng))
    return windows
