"""Arithmetic word problems in the SVAMP authors' CSV layout: where each split lives, loading, encoding.

Columns used: `Question` (numbers replaced by `number0`, `number1`, ...), `Numbers` (their values,
space-separated) and `Equation` (prefix notation over the placeholders and constants); Graph2Tree also reads
`group_nums` (the word indices of each quantity's cell, for its quantity cell graph: `graphs`). A recipe's
`splits` give each split's path relative to `--data_dir` (or to a Hub dataset repository with the
same layout, `--dataset_name`), with `{fold}` standing for `--fold` in cross-validated benchmarks:

    cv_mawps/fold{fold}/train.csv, cv_mawps/fold{fold}/dev.csv             MAWPS, 5 folds
    cv_asdiv-a/fold{fold}/train.csv, cv_asdiv-a/fold{fold}/dev.csv         ASDiv-A, 5 folds
    mawps-asdiv-a_svamp/train.csv, mawps-asdiv-a_svamp/dev.csv             train for SVAMP, the 1000 SVAMP problems

`--train_file` / `--validation_file` / `--test_file` replace a split's file. Every problem is scored
against the value of its gold equation (the SVAMP / SMC-Bench code does the same): the `Answer`
column is rounded in a few problems (e.g. 3.333 for 10 / 3), so it is not used.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset, Features, Value, load_dataset
from datasets.exceptions import DatasetGenerationError
from transformers.utils import logging

from smc_trainer.errors import MissingFileError, OfflineError, UsageError
from smc_trainer.tasks import check_fold
from smc_trainer.tasks.arithmetic.equations import evaluate_prefix, parse_numbers, tokenize
from smc_trainer.tasks.arithmetic.graphs import parse_group, quantity_graph_edges
from smc_trainer.tasks.arithmetic.vocab import EquationVocab

logger = logging.get_logger(__name__)

COLUMNS = ("Question", "Numbers", "Equation")
GROUP_COLUMN = "group_nums"  # Graph2Tree's quantity cells
GRAPH_COLUMNS = (*COLUMNS, GROUP_COLUMN)
SPLITS = ("train", "validation", "test")
CALIBRATION = "calibration"  # --calibration_file's examples, encoded like the training split
PLACEHOLDER = re.compile(r"number(\d+)")
DATA_HELP = ("the SVAMP authors' data folder (cv_mawps/, cv_asdiv-a/, mawps-asdiv-a_svamp/; "
             "github.com/arkilpatel/SVAMP/tree/main/data)")


# ---- where each split lives ----------------------------------------------------------------------


def _explicit_files(data_args) -> dict[str, str | None]:
    return {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}


def split_paths(recipe, data_args) -> dict[str, str | None]:
    """Each split's file, relative to the data root, for this run's fold; explicit --*_file flags win."""
    folds, fold = getattr(recipe, "folds", None), data_args.fold
    check_fold(recipe, fold)
    explicit = _explicit_files(data_args)
    paths: dict[str, str | None] = {}
    for split in SPLITS:
        template = explicit[split] or (recipe.splits.get(split) if recipe is not None else None)
        if template and "{fold}" in template:
            if fold is None:
                raise UsageError(f"recipe {recipe.name!r} is cross-validated over {folds} folds: pass --fold K "
                                 f"(0..{folds - 1}), or run it through smc_trainer.runs.pipeline / run_smc.py, which "
                                 "runs every fold and pools them")
            template = template.format(fold=fold)
        paths[split] = template
    if not paths["train"]:
        raise UsageError("no training data: the recipe names no train split and --train_file is not set")
    return paths


def load_raw_splits(data_args, model_args, recipe, columns: tuple[str, ...] = COLUMNS) -> dict[str, Dataset | None]:
    """The raw splits of this run: local files (--data_dir or --*_file), else a Hub dataset repo (--dataset_name),
    with `columns` (GRAPH_COLUMNS for Graph2Tree)."""
    paths, explicit = split_paths(recipe, data_args), _explicit_files(data_args)
    out: dict[str, Dataset | None] = {}
    for split, path in paths.items():
        if path is None:
            out[split] = None
        elif explicit[split] or data_args.data_dir:
            out[split] = _load_local(path if explicit[split] else os.path.join(data_args.data_dir, path), split,
                                     model_args.cache_dir, columns)
        elif data_args.dataset_name:
            out[split] = _load_hub(data_args.dataset_name, path, split, model_args, columns)
        else:
            raise UsageError(f"no data: pass --data_dir with {DATA_HELP}, or --dataset_name of a Hub dataset "
                             "repository with the same layout, or --train_file/--test_file")
    return out


def load_calibration_file(path: str | None, cache_dir: str | None,
                          columns: tuple[str, ...] = COLUMNS) -> Dataset | None:
    """The raw problems of `--calibration_file` (a CSV with the columns Question, Numbers, Equation, and
    group_nums for Graph2Tree), or None."""
    if path is None:
        return None
    if not path.lower().endswith(".csv"):
        raise UsageError(f"--calibration_file for an arithmetic recipe must be a CSV with the columns "
                         f"{', '.join(columns)}; got {path!r}")
    try:
        return _load_local(path, CALIBRATION, cache_dir, columns)
    except UsageError:
        raise
    except (ValueError, DatasetGenerationError) as err:  # pandas: usecols do not match the header
        cause = err.__cause__ or err
        raise UsageError(f"--calibration_file {path!r} must have the columns {', '.join(columns)} ({cause})") from None


def _csv_options(columns: tuple[str, ...]) -> dict[str, Any]:
    """Read the columns as plain text (no type inference, no 'NA' -> missing)."""
    return {"usecols": list(columns), "features": Features({c: Value("string") for c in columns}), "na_filter": False}


def _load_local(path: str, split: str, cache_dir: str | None, columns: tuple[str, ...] = COLUMNS) -> Dataset:
    if not os.path.isfile(path):
        raise MissingFileError(f"the {split} split {path!r} does not exist (check --data_dir / --{split}_file; "
                               f"--data_dir is {DATA_HELP})")
    _check_header(path, split, columns)
    return load_dataset("csv", data_files={split: path}, cache_dir=cache_dir, **_csv_options(columns))[split]


def _check_header(path: str, split: str, columns: tuple[str, ...]) -> None:
    """Graph2Tree's extra column, named before pandas fails on it."""
    if GROUP_COLUMN not in columns:
        return
    with open(path, encoding="utf-8", newline="") as fh:
        header = next(csv.reader(fh), [])
    if GROUP_COLUMN not in header:
        raise UsageError(f"the {split} split {path!r} has no {GROUP_COLUMN} column; --arithmetic_model graph2tree "
                         "builds its quantity cell graph from it (the SVAMP authors' CSVs have it); its columns: "
                         f"{', '.join(header)}")


def _load_hub(name: str, path: str, split: str, model_args, columns: tuple[str, ...] = COLUMNS) -> Dataset:
    try:
        return load_dataset(name, data_files={split: path}, cache_dir=model_args.cache_dir,
                            **_csv_options(columns))[split]
    except Exception as err:
        raise OfflineError(f"could not load {path!r} of dataset {name!r} from the Hugging Face Hub or the local cache "
                           f"({type(err).__name__}: {err}). Offline? Pass --data_dir with {DATA_HELP}.") from err


# ---- encoding -----------------------------------------------------------------------------------


def max_numbers(*splits: Dataset | None) -> int:
    """The most numbers any problem of these splits has: the decoder's number slots."""
    return max(len(parse_numbers(n)) for s in splits if s is not None for n in s["Numbers"])


def placeholder_positions(question: str, encoding, row: int, count: int) -> list[int]:
    """Token index of the first sub-token of each placeholder number0..number{count-1}; -1 when missing or cut."""
    positions = [-1] * count
    for match in PLACEHOLDER.finditer(question):
        k = int(match.group(1))
        if k < count and positions[k] < 0:
            token = encoding.char_to_token(row, match.start())
            positions[k] = -1 if token is None else token
    return positions


def gold_value(question: str, numbers_text: str, equation: str, split: str) -> tuple[list[float], float]:
    """(numbers, value of the gold equation) of one problem; a ValueError naming it if the equation is invalid."""
    numbers = parse_numbers(numbers_text)
    reference = evaluate_prefix(tokenize(equation), numbers)
    if reference is None:
        raise UsageError(f"{split} split: the gold equation {equation!r} is invalid for the numbers "
                         f"{numbers_text!r} (question: {question[:80]!r})")
    return numbers, reference


def encode_batch(examples: dict[str, list], tokenizer: Any, vocab: EquationVocab, max_length: int,
                 split: str, graphs: bool = False) -> dict[str, list]:
    """Model inputs and labels of a batch of raw rows (see `ArithmeticCollator` for the tensors); with `graphs`,
    also Graph2Tree's `graph_edges` (`graphs.quantity_graph_edges`)."""
    encoding = tokenizer(examples["Question"], truncation=True, max_length=max_length)
    out = {key: encoding[key] for key in tokenizer.model_input_names if key in encoding}
    out.update(number_positions=[], labels=[], label_numbers=[], label_answers=[])
    if graphs:
        out["graph_edges"] = []
    for row, (question, numbers_text, equation) in enumerate(zip(*(examples[c] for c in COLUMNS))):
        numbers, reference = gold_value(question, numbers_text, equation, split)
        ids = vocab.encode(tokenize(equation))
        if ids is None and split == "train":
            raise UsageError(f"train split: equation {equation!r} is outside the vocabulary built from it")
        positions = placeholder_positions(question, encoding, row, len(numbers))
        out["number_positions"].append(positions)
        out["labels"].append(ids if ids is not None else [])
        out["label_numbers"].append(numbers)
        out["label_answers"].append(reference)
        if graphs:
            group = parse_group(examples[GROUP_COLUMN][row], split)
            out["graph_edges"].append(quantity_graph_edges(
                question, numbers, group, positions, lambda char, r=row: encoding.char_to_token(r, char)))
    return out


def encode_split(dataset: Dataset, split: str, encode: Callable[..., dict[str, list]], fn_kwargs: dict[str, Any],
                 data_args, training_args, desc: str) -> Dataset:
    """Keep the first --max_train_samples / --max_eval_samples rows, then `encode` in cached batches (the main
    process first, so the others load its cache)."""
    limit = {"train": data_args.max_train_samples, CALIBRATION: None}.get(split, data_args.max_eval_samples)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    with training_args.main_process_first(desc=f"{split} encoding"):
        return dataset.map(
            encode, batched=True, remove_columns=dataset.column_names, fn_kwargs={**fn_kwargs, "split": split},
            num_proc=data_args.preprocessing_num_workers, load_from_cache_file=not data_args.overwrite_cache,
            desc=desc,
        )


def prepare_split(dataset: Dataset | None, split: str, tokenizer: Any, vocab: EquationVocab, data_args,
                  training_args, graphs: bool = False) -> Dataset | None:
    """Truncate (debug flags) and encode one raw split (with Graph2Tree's `graphs`); logs how many problems the
    decoder cannot solve."""
    if dataset is None:
        return None
    encoded = encode_split(dataset, split, encode_batch,
                           {"tokenizer": tokenizer, "vocab": vocab, "max_length": data_args.max_seq_length,
                            "graphs": graphs}, data_args, training_args, f"Encoding {split}")
    unreachable = sum(1 for ids in encoded["labels"] if not ids)
    missing = sum(1 for p in encoded["number_positions"] if min(p, default=0) < 0)
    if unreachable or missing:
        logger.warning(f"{split}: {unreachable} of {len(encoded)} gold equations use a constant unseen in training "
                       f"and {missing} problems have a number whose placeholder is missing or truncated; such "
                       "problems still count (they can only be solved by an equivalent equation)")
    return encoded


@dataclass
class ArithmeticCollator:
    """Pads a batch: token inputs by the tokenizer (right side), `number_positions` with -1 and `label_numbers`
    with NaN to `max_numbers` columns (fixed, so the Trainer can concatenate evaluation batches), `labels`
    with -100, Graph2Tree's `graph_edges` (when present) with rows of -1; `label_numbers` and `label_answers`
    stay float64 so the metric sees the exact values."""

    tokenizer: Any
    max_numbers: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        names = [k for k in self.tokenizer.model_input_names if k in features[0]]
        batch = self.tokenizer.pad([{k: f[k] for k in names} for f in features], padding=True, padding_side="right",
                                   pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt")
        batch = dict(batch)
        width = max(1, max(len(f["labels"]) for f in features))
        batch["number_positions"] = torch.tensor([_pad(f["number_positions"], self.max_numbers, -1)
                                                  for f in features], dtype=torch.long)
        batch["labels"] = torch.tensor([_pad(f["labels"], width, -100) for f in features], dtype=torch.long)
        batch["label_numbers"] = torch.tensor([_pad(f["label_numbers"], self.max_numbers, math.nan)
                                               for f in features], dtype=torch.float64)
        batch["label_answers"] = torch.tensor([f["label_answers"] for f in features], dtype=torch.float64)
        if "graph_edges" in features[0]:
            edges = max(1, max(len(f["graph_edges"]) for f in features))
            batch["graph_edges"] = torch.tensor([_pad(f["graph_edges"], edges, [-1, -1, -1]) for f in features],
                                                dtype=torch.long)
        return batch


def _pad(values: list, width: int, fill: Any) -> list:
    if len(values) > width:
        raise UsageError(f"{len(values)} values do not fit in {width} columns")
    return list(values) + [fill] * (width - len(values))
