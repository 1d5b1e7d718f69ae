"""Protein data: local CSV / TSV / FASTA files -> `{"sequence": str, "label": int}` -> ESM tokens.

The accepted formats are documented in `smc_trainer.tasks.protein` (package docstring) and the
README. Every split is read into the canonical schema first; labels are class names or indices
into `--protein_labels`, or melting temperatures binned by `--protein_tm_bins` (Meltome).
Sequences longer than `--protein_max_residues` keep their first residues; the count is logged.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, Features, Value, load_dataset
from transformers.utils import logging

from smc_trainer.errors import MissingFileError, UsageError

logger = logging.get_logger(__name__)

SPLITS = ("train", "validation", "test")
SEQUENCE_COLUMNS = ("sequence", "seq", "real_seq")  # real_seq: the original Meltome CSVs
LABEL_COLUMNS = ("label",)
TM_COLUMNS = ("tm", "melting_temperature")
DELIMITED = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
FASTA = (".fasta", ".fa", ".faa")
SUFFIXES = tuple(DELIMITED) + FASTA


@dataclass(frozen=True)
class ProteinSettings:
    """The validated --protein_* data flags, with the backbone's dropout (a training flag, read by the loader)."""

    labels: tuple[str, ...]
    tm_bins: tuple[float, ...] | None
    max_residues: int
    validation_percentage: float
    dropout: float | None = None

    @classmethod
    def from_args(cls, data_args, training_args=None) -> ProteinSettings:
        """Parse and check the data flags; errors name the flag, the value and what is valid. The dropout is
        `training_args.protein_dropout` (checked with the training flags; None without training arguments)."""
        if not data_args.protein_labels:
            raise UsageError("--protein_labels is required: comma-separated class names in label-id order, "
                             "e.g. cold,hot (the recipe sets none)")
        labels = tuple(x.strip().lower() for x in data_args.protein_labels.split(",") if x.strip())
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise UsageError(f"--protein_labels needs at least 2 distinct class names; got "
                             f"{data_args.protein_labels!r}")
        if data_args.protein_max_residues < 1:
            raise UsageError(f"--protein_max_residues must be >= 1; got {data_args.protein_max_residues}")
        if not 0.0 <= data_args.protein_validation_percentage < 100.0:
            raise UsageError("--protein_validation_percentage must be in [0, 100); got "
                             f"{data_args.protein_validation_percentage}")
        dropout = getattr(training_args, "protein_dropout", None)
        return cls(labels, parse_tm_bins(data_args.protein_tm_bins, len(labels)), data_args.protein_max_residues,
                   data_args.protein_validation_percentage, dropout)


def parse_tm_bins(text: str | None, num_labels: int) -> tuple[float, ...] | None:
    """Ascending thresholds, one fewer than the classes ("45,80" -> (45.0, 80.0) for 3 classes)."""
    if text is None or not str(text).strip():
        return None
    try:
        bins = tuple(float(x) for x in str(text).split(","))
    except ValueError:
        raise UsageError(f"--protein_tm_bins must be comma-separated numbers (deg C); got {text!r}") from None
    if len(bins) != num_labels - 1 or any(a >= b for a, b in zip(bins, bins[1:])):
        raise UsageError(f"--protein_tm_bins must be {num_labels - 1} ascending thresholds for the {num_labels} "
                         f"classes of --protein_labels; got {text!r}")
    return bins


# ---- reading files ---------------------------------------------------------------------------------


def read_fasta(path: str) -> Dataset:
    """A FASTA file as rows {id, sequence, <key>: <value> ...}; `key=value` words of each header become columns."""
    rows: list[dict[str, str]] = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            line = line.strip()
            if not line or line.startswith(";"):
                continue
            if line.startswith(">"):
                words = line[1:].replace("|", " ").split()
                if not words:
                    raise UsageError(f"{path}:{number}: empty FASTA header")
                row = {"id": words[0], "sequence": ""}
                row.update(w.split("=", 1) for w in words[1:] if "=" in w)
                rows.append(row)
            elif not rows:
                raise UsageError(f"{path}:{number}: sequence line before the first '>' header")
            else:
                rows[-1]["sequence"] += line
    if not rows:
        raise UsageError(f"{path} holds no FASTA records")
    keys = sorted({k for r in rows for k in r})
    return Dataset.from_dict({k: [r.get(k) for r in rows] for k in keys})


def read_file(path: str, flag: str, cache_dir: str | None = None) -> Dataset:
    """One local file (CSV, TSV or FASTA, by extension) as a raw Dataset."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise UsageError(f"--{flag} must end in {', '.join(SUFFIXES)}; got {path!r}")
    if not os.path.isfile(path):
        raise MissingFileError(f"--{flag} {path!r} does not exist")
    if suffix in FASTA:
        return read_fasta(path)
    return load_dataset("csv", data_files={"data": path}, delimiter=DELIMITED[suffix], cache_dir=cache_dir)["data"]


def find_split_files(data_dir: str) -> dict[str, str | None]:
    """`DATA_DIR/{train,validation,test}.{csv,tsv,tab,fasta,fa,faa}` (the first that exists per split)."""
    if not os.path.isdir(data_dir):
        raise MissingFileError(f"--data_dir {data_dir!r} is not a directory")
    found = {s: next((os.path.join(data_dir, s + x) for x in SUFFIXES if os.path.isfile(os.path.join(data_dir, s + x))),
                     None) for s in SPLITS}
    if found["train"] is None:
        raise MissingFileError(f"--data_dir {data_dir!r} has no train file (train.csv, train.tsv or train.fasta)")
    return found


def split_files(data_args) -> dict[str, str | None]:
    """The files of each split: --train_file/--validation_file/--test_file, else those in --data_dir."""
    files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
    if any(files.values()):
        return files
    if data_args.data_dir:
        return find_split_files(data_args.data_dir)
    raise UsageError("protein data are read from local files only (HotProtein and Meltome are not on the Hub in a "
                     "standard form): pass --data_dir or --train_file/--validation_file/--test_file "
                     "(CSV, TSV or FASTA; see smc_trainer/tasks/protein/__init__.py for the format)")


# ---- canonical schema --------------------------------------------------------------------------------


def _first(columns: list[str], names: tuple[str, ...]) -> str | None:
    lowered = {c.lower(): c for c in columns}
    return next((lowered[n] for n in names if n in lowered), None)


def label_index(value: Any, labels: tuple[str, ...], where: str) -> int:
    """A label (class name in any case, or an index as int/str/float) as a class index."""
    text = str(value).strip()
    if text.lower() in labels:
        return labels.index(text.lower())
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if number.is_integer() and 0 <= number < len(labels):
        return int(number)
    raise UsageError(f"{where}: label {value!r} is neither a class name ({', '.join(labels)}) nor an index in "
                     f"[0, {len(labels)}) (--protein_labels)")


def tm_class(tm: Any, bins: tuple[float, ...], where: str) -> int:
    """The class of a melting temperature: the number of thresholds <= tm."""
    try:
        value = float(tm)
    except (TypeError, ValueError):
        value = math.nan
    if math.isnan(value):
        raise UsageError(f"{where}: melting temperature {tm!r} is not a number")
    return int(np.searchsorted(bins, value, side="right"))


def to_canonical(raw: Dataset, settings: ProteinSettings, where: str) -> Dataset:
    """{"sequence", "label"} rows (label a ClassLabel of --protein_labels); sequences uppercased, spaces removed."""
    columns = raw.column_names
    seq_col, label_col, tm_col = (_first(columns, names) for names in (SEQUENCE_COLUMNS, LABEL_COLUMNS, TM_COLUMNS))
    if seq_col is None or (label_col is None and tm_col is None):
        raise UsageError(f"{where} has columns {columns}; expected a sequence column ({', '.join(SEQUENCE_COLUMNS)}) "
                         f"and a label column ({', '.join(LABEL_COLUMNS)}) or a melting temperature "
                         f"({', '.join(TM_COLUMNS)}, binned by --protein_tm_bins)")
    if label_col is None and settings.tm_bins is None:
        raise UsageError(f"{where} has melting temperatures ({tm_col!r}) but no label column; pass --protein_tm_bins "
                         "to bin them into the classes of --protein_labels")
    sequences, labels = [], []
    for i, (seq, value) in enumerate(zip(raw[seq_col], raw[label_col or tm_col])):
        row = f"{where}, row {i + 1}"
        seq = "".join(str(seq or "").split()).upper()
        if not seq:
            raise UsageError(f"{row}: empty sequence")
        sequences.append(seq)
        labels.append(label_index(value, settings.labels, row) if label_col else tm_class(value, settings.tm_bins, row))
    features = Features({"sequence": Value("string"), "label": ClassLabel(names=list(settings.labels))})
    return Dataset.from_dict({"sequence": sequences, "label": labels}, features=features)


def log_class_counts(dataset: Dataset, split: str, labels: tuple[str, ...]) -> None:
    counts = Counter(dataset["label"])
    logger.info(f"protein {split}: {len(dataset)} sequences; per class " +
                ", ".join(f"{name} {counts.get(i, 0)}" for i, name in enumerate(labels)))


def carve_validation(train: Dataset, percentage: float, seed: int) -> tuple[Dataset, Dataset]:
    """(train, validation): `percentage`% of train held out, stratified by class when every class allows it."""
    test_size = percentage / 100.0
    try:
        parts = train.train_test_split(test_size=test_size, seed=seed, stratify_by_column="label")
    except ValueError as err:  # a class too small to stratify
        logger.warning(f"protein: cannot stratify the validation split ({err}); drawing it at random")
        parts = train.train_test_split(test_size=test_size, seed=seed)
    logger.info(f"protein: no validation file; held out {len(parts['test'])} of {len(train)} training sequences "
                f"({percentage:g}%, seed {seed}) for validation")
    return parts["train"], parts["test"]


def load_splits(data_args, settings: ProteinSettings, seed: int, cache_dir: str | None = None) -> dict[str, Dataset]:
    """Canonical train/validation/test splits (validation carved from train when no file gives one)."""
    files = split_files(data_args)
    if files["train"] is None:
        raise UsageError("protein: --train_file is required (or a train file in --data_dir)")
    from_dir = not any((data_args.train_file, data_args.validation_file, data_args.test_file))
    splits: dict[str, Dataset] = {}
    for split, path in files.items():
        if path:
            flag = "data_dir" if from_dir else f"{split}_file"
            splits[split] = to_canonical(read_file(path, flag, cache_dir), settings, where=path)
    if "validation" not in splits and settings.validation_percentage > 0:
        splits["train"], splits["validation"] = carve_validation(splits["train"], settings.validation_percentage, seed)
    for split, dataset in splits.items():
        log_class_counts(dataset, split, settings.labels)
    return splits


# ---- cropping and tokenization -------------------------------------------------------------------------


def crop(dataset: Dataset, max_residues: int, split: str) -> Dataset:
    """Keep the first `max_residues` residues of longer sequences, logging how many were cropped."""
    lengths = [len(s) for s in dataset["sequence"]]
    too_long = sum(n > max_residues for n in lengths)
    if not too_long:
        logger.info(f"protein {split}: no sequence longer than {max_residues} residues; nothing cropped")
        return dataset
    logger.warning(f"protein {split}: cropped {too_long} of {len(dataset)} sequences longer than {max_residues} "
                   f"residues (the longest has {max(lengths)}) to their first {max_residues} residues")
    return dataset.map(lambda s: {"sequence": s[:max_residues]}, input_columns="sequence",
                       desc=f"Cropping {split}")


def tokenize(dataset: Dataset, tokenizer: Any, split: str, data_args, training_args) -> Dataset:
    """ESM tokens (<cls> residues <eos>) and `labels`; the sequences were cropped before."""
    with training_args.main_process_first(desc=f"{split} tokenization"):
        return dataset.map(
            lambda batch: tokenizer(batch["sequence"]),
            batched=True,
            remove_columns=["sequence"],
            num_proc=data_args.preprocessing_num_workers,
            load_from_cache_file=not data_args.overwrite_cache,
            desc=f"Tokenizing {split}",
        ).rename_column("label", "labels")


def prepare(splits: dict[str, Dataset], tokenizer: Any, settings: ProteinSettings, data_args,
            training_args) -> dict[str, Dataset | None]:
    """Truncate (--max_train_samples / --max_eval_samples), crop and tokenize every split."""
    out: dict[str, Dataset | None] = {}
    for split in SPLITS:
        dataset = splits.get(split)
        if dataset is None:
            out[split] = None
            continue
        limit = data_args.max_train_samples if split == "train" else data_args.max_eval_samples
        if limit is not None:
            dataset = dataset.select(range(min(limit, len(dataset))))
        out[split] = tokenize(crop(dataset, settings.max_residues, split), tokenizer, split, data_args, training_args)
    return out
