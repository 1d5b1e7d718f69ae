"""Multiple-choice QA (CSQA, WinoGrande, RACE) for `AutoModelForMultipleChoice` models (RoBERTa, BERT ...).

Every dataset is first converted to one canonical schema by the adapters of
`multiple_choice_schemas` (question, choices, label, optional context and subset); tokenization,
collation and the metric then know nothing about the source. Each choice is encoded as a sentence
pair: (`Q: <question>`, `A: <choice>`) as in the paper's fairseq inputs, or (context, choice) when
the example has a context (WinoGrande: the sentence before the blank; RACE: the article). Only the
first segment is ever truncated, so no answer is cut; an answer that cannot fit is an error.
Recipes with `subsets` (RACE: middle, high) evaluate each subset on its own.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict, load_dataset
from transformers import AutoModelForMultipleChoice, DataCollatorForMultipleChoice
from transformers.utils import logging

from smc_trainer.errors import MissingFileError, OfflineError, UsageError
from smc_trainer.metrics import argmax_accuracy
from smc_trainer.tasks import TaskBundle
from smc_trainer.tasks.loading import checkpoint_name, hub_kwargs, load_tokenizer_and_config, offline_hint
from smc_trainer.tasks.multiple_choice_schemas import (
    ADAPTERS,
    CANONICAL_COLUMNS,
    check_canonical,
    to_canonical,
)

logger = logging.get_logger(__name__)

LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv"}
QUESTION_PREFIX = "Q: "
ANSWER_PREFIX = "A: "
SPLITS = ("train", "validation", "test")

RawSplit = Dataset | dict[str, Dataset] | None  # a dict: one dataset per named evaluation subset


# ---- loading -----------------------------------------------------------------------------------


def load_raw_splits(data_args, model_args, recipe) -> dict[str, RawSplit]:
    """Raw train/validation/test splits: local files when given, else the Hub dataset mapped by the recipe.

    With recipe `subsets` (RACE: middle, high), the Hub's validation and test splits come from one
    dataset config per subset; local validation/test files are split by their rows' subset later.
    """
    files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
    if any(files.values()):
        return {split: _load_local(path, split, model_args.cache_dir) if path else None
                for split, path in files.items()}
    name = data_args.dataset_name
    if not name:
        raise UsageError("no data: pass --dataset_name or --train_file/--validation_file (the recipe sets neither)")
    dataset = _load_hub(name, data_args.dataset_config_name, model_args.cache_dir)
    theirs = {ours: recipe.split(ours) if recipe is not None else ours for ours in SPLITS}
    subsets = list(getattr(recipe, "subsets", None) or [])
    if subsets and any(theirs[s] is not None for s in SPLITS[1:]):
        by_subset = {subset: _load_hub(name, subset, model_args.cache_dir) for subset in subsets}
    else:
        by_subset = {}
    splits: dict[str, RawSplit] = {}
    for ours in SPLITS:
        if theirs[ours] is None:
            splits[ours] = None
        elif ours != "train" and by_subset:
            splits[ours] = {s: d[theirs[ours]] for s, d in by_subset.items() if _has_split(d, theirs[ours], name, ours)}
        else:
            splits[ours] = dataset[theirs[ours]] if _has_split(dataset, theirs[ours], name, ours) else None
    return splits


def _has_split(dataset: DatasetDict, theirs: str, name: str, ours: str) -> bool:
    if theirs in dataset:
        return True
    if ours != "test":
        logger.warning(f"{name} has no split {theirs!r} (ours: {ours}); it has {list(dataset)}")
    return False


def _load_hub(name: str, config: str | None, cache_dir: str | None) -> DatasetDict:
    """`datasets.load_dataset(name, config)`, with an error naming the id and the local-file flags when it fails."""
    try:
        return load_dataset(name, config, cache_dir=cache_dir)
    except Exception as err:
        which = f"{name!r}" + (f" (config {config!r})" if config else "")
        raise OfflineError(f"could not load dataset {which} from the Hugging Face Hub or the local cache "
                           f"({type(err).__name__}: {err}). Offline? Pass local files in the dataset's schema with "
                           "--train_file, --validation_file and --test_file (json, jsonl or csv).") from err


def _load_local(path: str, split: str, cache_dir: str | None) -> Dataset:
    builder = LOCAL_BUILDERS.get(os.path.splitext(path)[1].lower())
    if builder is None:
        raise UsageError(f"--{split}_file must end in {', '.join(LOCAL_BUILDERS)}; got {path!r}")
    if not os.path.isfile(path):
        raise MissingFileError(f"--{split}_file {path!r} does not exist")
    return load_dataset(builder, data_files={split: path}, cache_dir=cache_dir)[split]


def load_model_and_tokenizer(model_args, recipe=None) -> tuple[Any, Any, str]:
    """(model, tokenizer, description of where the weights came from) for `--model_name_or_path`; a causal LM is
    refused once its config is read, naming the recipe that scores it (`causal_lm.redirect`)."""
    from smc_trainer.tasks.causal_lm.redirect import refuse_causal_lm

    name = checkpoint_name(model_args)
    with offline_hint(name):
        tokenizer, config = load_tokenizer_and_config(model_args)
        refuse_causal_lm(config, model_args, recipe, "multiple_choice")
        if model_args.from_scratch:
            return AutoModelForMultipleChoice.from_config(config), tokenizer, f"{name} config, random weights"
        model = AutoModelForMultipleChoice.from_pretrained(name, config=config, **hub_kwargs(model_args))
    return model, tokenizer, f"{name} (pretrained)"


# ---- preprocessing -------------------------------------------------------------------------------


def segment_pairs(examples: dict[str, list]) -> tuple[list[str], list[str], list[int]]:
    """(first segments, second segments, choices per example) of a batch of canonical examples."""
    n = len(examples["question"])
    contexts = examples["context"] if "context" in examples else [None] * n
    firsts, seconds, counts = [], [], []
    for question, choices, context in zip(examples["question"], examples["choices"], contexts):
        if context is None:
            firsts.extend([QUESTION_PREFIX + question] * len(choices))
            seconds.extend(ANSWER_PREFIX + c for c in choices)
        else:
            firsts.extend(context if isinstance(context, list) else [context] * len(choices))
            seconds.extend(choices)
        counts.append(len(choices))
    return firsts, seconds, counts


def check_answers_fit(seconds: list[str], tokenizer: Any, max_length: int) -> None:
    """Raise if a second segment (an answer) leaves no room in `max_length` for even one token of its first
    segment (the question or context): the first segment is the only one truncated, and it cannot vanish."""
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    lengths = [len(ids) for ids in tokenizer(seconds, add_special_tokens=False)["input_ids"]]
    too_long = [i for i, n in enumerate(lengths) if n + specials >= max_length]
    if too_long:
        worst = max(too_long, key=lambda i: lengths[i])
        raise UsageError(f"{len(too_long)} of {len(seconds)} answer candidates in this batch leave no room for the "
                         f"question/context in --max_seq_length {max_length} (the longest needs {lengths[worst]} "
                         f"tokens + {specials} special tokens: {seconds[worst][:80]!r}); answers are never "
                         "truncated, so raise --max_seq_length")


def tokenize_batch(examples: dict[str, list], tokenizer: Any, max_length: int) -> dict[str, list]:
    """Encode each (first, second) pair truncating only the first; nested per example: input_ids[i][choice]."""
    firsts, seconds, counts = segment_pairs(examples)
    check_answers_fit(seconds, tokenizer, max_length)
    encoded = tokenizer(firsts, seconds, truncation="only_first", max_length=max_length)
    starts = np.cumsum([0, *counts])
    out: dict[str, list] = {key: [values[s:e] for s, e in zip(starts[:-1], starts[1:])]
                            for key, values in encoded.items()}
    out["label"] = list(examples["label"])
    return out


def split_subsets(dataset: Dataset, subsets: Sequence[str], where: str) -> dict[str, Dataset]:
    """Group a canonical split's rows by their `subset` column into the recipe's named subsets."""
    if "subset" not in dataset.column_names or all(s is None for s in dataset["subset"]):
        raise UsageError(f"{where}: the recipe reports subsets {', '.join(subsets)} separately, but the rows name "
                         "no subset (RACE rows carry it in example_id, e.g. 'middle12.txt'; canonical files need a "
                         "'subset' column)")
    seen = Counter(dataset["subset"])
    others = {str(k): v for k, v in seen.items() if k not in subsets}
    if others:
        logger.warning(f"{where}: {sum(others.values())} row(s) of subset(s) {sorted(others)} are not among the "
                       f"recipe's subsets ({', '.join(subsets)}) and are not evaluated")
    missing = [s for s in subsets if not seen.get(s)]
    if len(missing) == len(subsets):
        raise UsageError(f"{where}: no row belongs to any of the subsets {', '.join(subsets)}; found {sorted(others)}")
    if missing:
        logger.warning(f"{where}: no rows of subset(s) {', '.join(missing)}; they are not evaluated")
    return {s: dataset.filter(lambda x, s=s: x == s, input_columns="subset", desc=f"Selecting {where} ({s})")
            for s in subsets if s not in missing}


def prepare_split(dataset: RawSplit, split: str, tokenizer: Any, data_args, training_args,
                  subsets: Sequence[str] = ()) -> Dataset | dict[str, Dataset] | None:
    """Canonicalize, drop unlabeled rows, truncate (debug flags) and tokenize one split.

    With `subsets`, an evaluation split becomes a dict {subset: Dataset}: a dict given here (one Hub
    config per subset) is kept, a single dataset is grouped by its rows' `subset`. Train stays whole.
    """
    if dataset is None:
        return None
    prepare = functools.partial(_prepare_canonical, tokenizer=tokenizer, data_args=data_args,
                                training_args=training_args)
    if isinstance(dataset, dict):
        parts = {name: to_canonical(part, where=f"{split} split ({name})") for name, part in dataset.items()}
    else:
        canonical = to_canonical(dataset, where=f"{split} split")
        if not subsets or split == "train":
            return prepare(canonical, split, split)
        parts = split_subsets(canonical, subsets, where=f"{split} split")
    prepared = {name: prepare(part, split, f"{split} ({name})") for name, part in parts.items()}
    prepared = {name: part for name, part in prepared.items() if part is not None}
    return prepared or None


def _prepare_canonical(dataset: Dataset, split: str, where: str, tokenizer: Any, data_args,
                       training_args) -> Dataset | None:
    labeled = dataset.filter(lambda y: y >= 0, input_columns="label", desc=f"Dropping unlabeled {where} rows")
    if len(labeled) == 0:
        logger.warning(f"the {where} split has no labels (hidden test labels?); it is not evaluated")
        return None
    if len(labeled) < len(dataset):
        logger.warning(f"{where}: dropped {len(dataset) - len(labeled)} unlabeled examples")
    limit = data_args.max_train_samples if split == "train" else data_args.max_eval_samples
    if limit is not None:
        labeled = labeled.select(range(min(limit, len(labeled))))
    with training_args.main_process_first(desc=f"{where} tokenization"):
        return labeled.map(
            tokenize_batch,
            batched=True,
            fn_kwargs={"tokenizer": tokenizer, "max_length": data_args.max_seq_length},
            remove_columns=[c for c in labeled.column_names if c != "label"],
            num_proc=data_args.preprocessing_num_workers,
            load_from_cache_file=not data_args.overwrite_cache,
            desc=f"Tokenizing {where}",
        )


def prepare_splits(raw: dict[str, RawSplit], tokenizer: Any, data_args, training_args,
                   subsets: Sequence[str] = ()) -> list[Dataset | dict[str, Dataset] | None]:
    """[train, validation, test], each prepared by `prepare_split`."""
    return [prepare_split(raw.get(s), s, tokenizer, data_args, training_args, subsets) for s in SPLITS]


# ---- metric, collator, bundle ----------------------------------------------------------------------


def compute_metrics(eval_pred: Any) -> dict[str, float]:
    """Accuracy of the highest-scoring choice, through the packaged `evaluate` accuracy module."""
    return argmax_accuracy(eval_pred)


def pooled_accuracy(metrics: dict[str, float], split: str, subsets: Sequence[str] = ()) -> dict[str, float]:
    """`<split>_accuracy` over the examples of all subsets together (RACE: M + H), from each subset's
    accuracy and size; nothing unless every subset was evaluated."""
    keys = [(f"{split}_{s}_accuracy", f"{split}_{s}_samples") for s in subsets]
    if not keys or any(a not in metrics or n not in metrics for a, n in keys):
        return {}
    total = sum(metrics[n] for _, n in keys)
    return {f"{split}_accuracy": sum(metrics[a] * metrics[n] for a, n in keys) / total,
            f"{split}_samples": total}


def make_collator(tokenizer: Any, training_args) -> DataCollatorForMultipleChoice:
    """Dynamic padding of all choices of a batch to the same length."""
    half = training_args.fp16 or training_args.bf16
    return DataCollatorForMultipleChoice(tokenizer, pad_to_multiple_of=8 if half else None)


def build(model_args, data_args, training_args, recipe) -> TaskBundle:
    """Model, tokenized splits, collator and accuracy metric for a multiple-choice recipe."""
    calibration = load_calibration_file(training_args, model_args.cache_dir)  # before the model: errors first
    model, tokenizer, source = load_model_and_tokenizer(model_args, recipe)
    logger.info(f"multiple_choice: model {source}")
    raw = load_raw_splits(data_args, model_args, recipe)
    chance = recipe.chance_level if recipe is not None else None
    subsets = recipe.subsets if recipe is not None else ()
    return assemble(model, tokenizer, source, raw, data_args, training_args, chance, subsets=subsets,
                    calibration=calibration)


def load_calibration_file(training_args, cache_dir: str | None) -> Dataset | None:
    """`--calibration_file`'s examples in the canonical schema (checked here, before any model loads), or None."""
    path = getattr(training_args, "calibration_file", None)
    if path is None:
        return None
    return to_canonical(_load_local(path, "calibration", cache_dir), where=f"--calibration_file {path!r}")


def assemble(model, tokenizer, source: str, raw, data_args, training_args, chance_level: float | None,
             subsets: Sequence[str] = (), calibration: Dataset | None = None) -> TaskBundle:
    """Tokenize canonical raw splits (and canonical calibration examples) and wrap them with the model, collator
    and accuracy metric."""
    train, validation, test = prepare_splits(raw, tokenizer, data_args, training_args, subsets)
    if calibration is not None:
        calibration = _prepare_canonical(calibration, "calibration", "--calibration_file", tokenizer,
                                         dataclasses.replace(data_args, max_eval_samples=None), training_args)
    return TaskBundle(
        model=model,
        processing_class=tokenizer,
        train_dataset=train,
        eval_dataset=validation,
        test_dataset=test,
        data_collator=make_collator(tokenizer, training_args),
        compute_metrics=compute_metrics,
        chance_level=chance_level,
        model_source=source,
        aggregate_metrics=functools.partial(pooled_accuracy, subsets=list(subsets)) if subsets else None,
        calibration_dataset=calibration,
    )


__all__ = [
    "ADAPTERS",
    "ANSWER_PREFIX",
    "CANONICAL_COLUMNS",
    "QUESTION_PREFIX",
    "assemble",
    "build",
    "check_answers_fit",
    "check_canonical",
    "compute_metrics",
    "load_calibration_file",
    "load_model_and_tokenizer",
    "load_raw_splits",
    "pooled_accuracy",
    "prepare_split",
    "prepare_splits",
    "segment_pairs",
    "split_subsets",
    "to_canonical",
    "tokenize_batch",
]
