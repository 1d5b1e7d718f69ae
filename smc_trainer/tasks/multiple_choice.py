"""Multiple-choice QA (CSQA and friends) for `AutoModelForMultipleChoice` models (RoBERTa, BERT ...).

Every dataset is first converted to one canonical schema, `{"question": str, "choices": list[str],
"label": int}` (label -1: unlabeled), by the adapters below; tokenization, collation and the metric
then know nothing about the source. Each (question, choice) pair is encoded as a sentence pair
`Q: <question>` / `A: <choice>` as in the paper's fairseq inputs, truncating only the question side
so that no answer is ever cut.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
from datasets import Dataset, load_dataset
from transformers import AutoConfig, AutoModelForMultipleChoice, AutoTokenizer, DataCollatorForMultipleChoice
from transformers.utils import logging

from smc_trainer.tasks import TaskBundle

logger = logging.get_logger(__name__)

CANONICAL_COLUMNS = ("question", "choices", "label")
LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv"}
QUESTION_PREFIX = "Q: "
ANSWER_PREFIX = "A: "


# ---- adapters: source schema -> canonical ---------------------------------------------------------


def _is_canonical(columns: set[str], example: dict[str, Any]) -> bool:
    return set(CANONICAL_COLUMNS) <= columns and isinstance(example["choices"], list)


def _is_hub_csqa(columns: set[str], example: dict[str, Any]) -> bool:
    """tau/commonsense_qa (also ARC / OpenBookQA-like): choices {label: [...], text: [...]}, answerKey."""
    return {"question", "choices", "answerKey"} <= columns and isinstance(example["choices"], dict)


def _is_original_csqa(columns: set[str], example: dict[str, Any]) -> bool:
    """The original CSQA jsonl: question {stem, choices: [{label, text}]}, answerKey."""
    return {"question", "answerKey"} <= columns and isinstance(example["question"], dict)


def _is_flat(columns: set[str], example: dict[str, Any]) -> bool:
    """CSV-friendly: question, choice0 .. choiceK, label."""
    return {"question", "choice0", "label"} <= columns


def _label_of(key: str | None, labels: list[str]) -> int:
    return labels.index(key) if key and key in labels else -1


def _from_canonical(ex: dict[str, Any]) -> dict[str, Any]:
    label = ex["label"]
    return {"question": ex["question"], "choices": list(ex["choices"]), "label": -1 if label is None else int(label)}


def _from_hub_csqa(ex: dict[str, Any]) -> dict[str, Any]:
    labels = list(ex["choices"]["label"])
    return {"question": ex["question"], "choices": list(ex["choices"]["text"]),
            "label": _label_of(ex["answerKey"], labels)}


def _from_original_csqa(ex: dict[str, Any]) -> dict[str, Any]:
    choices = ex["question"]["choices"]
    if isinstance(choices, dict):  # datasets may load a list of structs as a struct of lists
        labels, texts = list(choices["label"]), list(choices["text"])
    else:
        labels, texts = [c["label"] for c in choices], [c["text"] for c in choices]
    return {"question": ex["question"]["stem"], "choices": texts, "label": _label_of(ex.get("answerKey"), labels)}


def _from_flat(ex: dict[str, Any]) -> dict[str, Any]:
    choices, i = [], 0
    while f"choice{i}" in ex and ex[f"choice{i}"] is not None:
        choices.append(str(ex[f"choice{i}"]))
        i += 1
    label = ex["label"]
    return {"question": ex["question"], "choices": choices, "label": -1 if label is None else int(label)}


ADAPTERS: list[tuple[str, Callable[[set[str], dict], bool], Callable[[dict], dict]]] = [
    ("canonical", _is_canonical, _from_canonical),
    ("csqa", _is_hub_csqa, _from_hub_csqa),
    ("csqa-jsonl", _is_original_csqa, _from_original_csqa),
    ("flat", _is_flat, _from_flat),
]


def to_canonical(dataset: Dataset, where: str = "dataset") -> Dataset:
    """Convert `dataset` to the canonical schema with the first adapter that recognizes it."""
    if len(dataset) == 0:
        raise ValueError(f"{where} is empty")
    columns, first = set(dataset.column_names), dataset[0]
    for name, detect, convert in ADAPTERS:
        if detect(columns, first):
            logger.info(f"{where}: {name} schema, {len(dataset)} examples")
            converted = dataset.map(convert, remove_columns=dataset.column_names, desc=f"Reading {where}")
            check_canonical(converted, where)
            return converted
    raise ValueError(f"{where} has columns {sorted(columns)}, which no adapter recognizes; expected "
                     "question/choices/label, the CSQA schema (question, choices{label,text}, answerKey) or "
                     "question/choice0..choiceK/label")


def check_canonical(dataset: Dataset, where: str) -> None:
    """Every example has the same number of choices (the model scores a fixed set) and a valid label."""
    counts = {len(c) for c in dataset["choices"]}
    if len(counts) != 1 or min(counts) < 2:
        raise ValueError(f"{where}: every question needs the same number (>= 2) of choices; found {sorted(counts)}")
    n = counts.pop()
    bad = [y for y in dataset["label"] if not -1 <= y < n]
    if bad:
        raise ValueError(f"{where}: labels must be in [0, {n}) (or -1 for unlabeled); found {bad[0]}")


# ---- loading -----------------------------------------------------------------------------------


def load_raw_splits(data_args, model_args, recipe) -> dict[str, Dataset | None]:
    """Raw train/validation/test splits: local files when given, else the Hub dataset mapped by the recipe."""
    files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
    if any(files.values()):
        return {split: _load_local(path, split, model_args.cache_dir) if path else None
                for split, path in files.items()}
    if not data_args.dataset_name:
        raise ValueError("no data: pass --dataset_name or --train_file/--validation_file (the recipe sets neither)")
    try:
        dataset = load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=model_args.cache_dir)
    except Exception as err:
        raise OSError(f"could not load dataset {data_args.dataset_name!r} from the Hugging Face Hub or the local "
                      f"cache ({type(err).__name__}: {err}). Offline? Pass local files with --train_file and "
                      "--validation_file (json, jsonl or csv).") from err
    splits: dict[str, Dataset | None] = {}
    for ours in ("train", "validation", "test"):
        theirs = recipe.split(ours) if recipe is not None else ours
        splits[ours] = dataset[theirs] if theirs is not None and theirs in dataset else None
        if theirs is not None and theirs not in dataset and ours != "test":
            logger.warning(f"{data_args.dataset_name} has no split {theirs!r} (ours: {ours}); it has {list(dataset)}")
    return splits


def _load_local(path: str, split: str, cache_dir: str | None) -> Dataset:
    builder = LOCAL_BUILDERS.get(os.path.splitext(path)[1].lower())
    if builder is None:
        raise ValueError(f"--{split}_file must end in {', '.join(LOCAL_BUILDERS)}; got {path!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--{split}_file {path!r} does not exist")
    return load_dataset(builder, data_files={split: path}, cache_dir=cache_dir)[split]


def load_model_and_tokenizer(model_args) -> tuple[Any, Any, str]:
    """(model, tokenizer, description of where the weights came from) for `--model_name_or_path`."""
    name = model_args.model_name_or_path
    if not name:
        raise ValueError("--model_name_or_path is required (the recipe sets none)")
    common = {"revision": model_args.model_revision, "cache_dir": model_args.cache_dir}
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or name, **common)
        config = AutoConfig.from_pretrained(model_args.config_name or name, **common)
        if model_args.from_scratch:
            return AutoModelForMultipleChoice.from_config(config), tokenizer, f"{name} config, random weights"
        model = AutoModelForMultipleChoice.from_pretrained(name, config=config, **common)
    except OSError as err:
        raise OSError(f"could not load model {name!r} ({err}). Offline? Pass a local folder with the model's "
                      "config, weights and tokenizer as --model_name_or_path.") from err
    return model, tokenizer, f"{name} (pretrained)"


# ---- preprocessing and metric --------------------------------------------------------------------


def tokenize_batch(examples: dict[str, list], tokenizer: Any, max_length: int) -> dict[str, list]:
    """Encode each (question, choice) pair; nested per example: input_ids[i][choice]."""
    firsts, seconds, counts = [], [], []
    for question, choices in zip(examples["question"], examples["choices"]):
        firsts.extend([QUESTION_PREFIX + question] * len(choices))
        seconds.extend(ANSWER_PREFIX + c for c in choices)
        counts.append(len(choices))
    encoded = tokenizer(firsts, seconds, truncation="only_first", max_length=max_length)
    out: dict[str, list] = {}
    for key, values in encoded.items():
        starts = np.cumsum([0, *counts])
        out[key] = [values[s:e] for s, e in zip(starts[:-1], starts[1:])]
    out["label"] = list(examples["label"])
    return out


def prepare_split(dataset: Dataset | None, split: str, tokenizer: Any, data_args, training_args) -> Dataset | None:
    """Canonicalize, drop unlabeled rows, truncate (debug flags) and tokenize one split."""
    if dataset is None:
        return None
    dataset = to_canonical(dataset, where=f"{split} split")
    labeled = dataset.filter(lambda y: y >= 0, input_columns="label", desc=f"Dropping unlabeled {split} rows")
    if len(labeled) == 0:
        logger.warning(f"the {split} split has no labels (hidden test labels?); it is not evaluated")
        return None
    if len(labeled) < len(dataset):
        logger.warning(f"{split}: dropped {len(dataset) - len(labeled)} unlabeled examples")
    limit = data_args.max_train_samples if split == "train" else data_args.max_eval_samples
    if limit is not None:
        labeled = labeled.select(range(min(limit, len(labeled))))
    with training_args.main_process_first(desc=f"{split} tokenization"):
        return labeled.map(
            tokenize_batch,
            batched=True,
            fn_kwargs={"tokenizer": tokenizer, "max_length": data_args.max_seq_length},
            remove_columns=["question", "choices"],
            num_proc=data_args.preprocessing_num_workers,
            load_from_cache_file=not data_args.overwrite_cache,
            desc=f"Tokenizing {split}",
        )


def prepare_splits(raw: dict[str, Dataset | None], tokenizer: Any, data_args, training_args) -> list[Dataset | None]:
    """[train, validation, test], each prepared by `prepare_split`."""
    return [prepare_split(raw.get(s), s, tokenizer, data_args, training_args) for s in ("train", "validation", "test")]


def compute_metrics(eval_pred: Any) -> dict[str, float]:
    """Accuracy of the highest-scoring choice (plain numpy: `evaluate.load('accuracy')` needs the Hub)."""
    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    labels = np.asarray(eval_pred.label_ids)
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def make_collator(tokenizer: Any, training_args) -> DataCollatorForMultipleChoice:
    """Dynamic padding of all choices of a batch to the same length."""
    half = training_args.fp16 or training_args.bf16
    return DataCollatorForMultipleChoice(tokenizer, pad_to_multiple_of=8 if half else None)


def build(model_args, data_args, training_args, recipe) -> TaskBundle:
    """Model, tokenized splits, collator and accuracy metric for a multiple-choice recipe."""
    model, tokenizer, source = load_model_and_tokenizer(model_args)
    logger.info(f"multiple_choice: model {source}")
    raw = load_raw_splits(data_args, model_args, recipe)
    chance = recipe.chance_level if recipe is not None else None
    return assemble(model, tokenizer, source, raw, data_args, training_args, chance)


def assemble(model, tokenizer, source: str, raw, data_args, training_args, chance_level: float | None) -> TaskBundle:
    """Tokenize canonical raw splits and wrap them with the model, collator and accuracy metric."""
    train, validation, test = prepare_splits(raw, tokenizer, data_args, training_args)
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
    )
