"""Parallel data for the English-centric directions: OPUS-100 pair configs from the Hub, or local files.

Every source is read into the OPUS-100 schema, one row per sentence pair:
`{"translation": {"en": "...", "fr": "..."}}`. A pair is named like OPUS-100's configs, its two
languages in alphabetical order (`cs-en`, `en-fr`).

Local layout (`--data_dir DIR`): one folder per pair, one or more files per split, JSON lines (or
JSON, or Parquet, so a downloaded copy of the OPUS-100 repository works as it is):

    DIR/cs-en/train.jsonl         {"translation": {"cs": "Dobrý den.", "en": "Hello."}}
    DIR/cs-en/validation.jsonl
    DIR/cs-en/test.jsonl
    DIR/en-fr/train-00000-of-00001.parquet ...
"""

from __future__ import annotations

import os
from typing import Any

from datasets import Dataset, concatenate_datasets, load_dataset
from transformers.utils import logging

from smc_trainer.errors import MissingFileError, OfflineError, UsageError
from smc_trainer.tasks.translation.languages import PIVOT

logger = logging.get_logger(__name__)

SPLITS = ("train", "validation", "test")
LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
LOCAL_HELP = ("--data_dir DIR with DIR/<pair>/<split>.jsonl files (pair as OPUS-100 names it, e.g. cs-en, en-fr; rows "
              '{"translation": {"cs": ..., "en": ...}})')


def pair_name(lang: str) -> str:
    """OPUS-100's config name for `lang` <-> English: the two codes in alphabetical order (`cs-en`, `en-fr`)."""
    return "-".join(sorted((lang, PIVOT)))


def load_pair(lang: str, splits: tuple[str, ...], data_args: Any, model_args: Any, recipe: Any) -> dict[str, Dataset]:
    """The requested splits of the `lang`-English pair that exist, from `--data_dir` or the Hub."""
    if data_args.data_dir:
        found = {split: _load_local(data_args.data_dir, lang, split, model_args.cache_dir) for split in splits}
    else:
        found = _load_hub(lang, splits, data_args, model_args, recipe)
    present = {split: ds for split, ds in found.items() if ds is not None}
    for split, dataset in present.items():
        check_schema(dataset, lang, f"{pair_name(lang)} {split}")
    return present


def _load_hub(lang: str, splits: tuple[str, ...], data_args: Any, model_args: Any, recipe: Any) -> dict:
    name, config = data_args.dataset_name, pair_name(lang)
    if not name:
        raise UsageError(f"no data: pass --dataset_name (e.g. Helsinki-NLP/opus-100) or {LOCAL_HELP}")
    try:
        dataset = load_dataset(name, config, cache_dir=model_args.cache_dir)
    except Exception as err:
        raise OfflineError(f"could not load dataset {name!r} config {config!r} from the Hugging Face Hub or the local "
                           f"cache ({type(err).__name__}: {err}). Offline? Pass local files: {LOCAL_HELP}.") from err
    theirs = {split: recipe.split(split) if recipe is not None else split for split in splits}
    return {split: dataset[t] if t is not None and t in dataset else None for split, t in theirs.items()}


def _load_local(data_dir: str, lang: str, split: str, cache_dir: str | None) -> Dataset | None:
    folder = os.path.join(data_dir, pair_name(lang))
    if not os.path.isdir(folder):
        raise MissingFileError(f"--data_dir: no folder {folder!r} for the {lang}-{PIVOT} pair; expected "
                               f"{LOCAL_HELP}")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                   if os.path.splitext(f)[1] in LOCAL_BUILDERS and (f.startswith(f"{split}.") or
                                                                     f.startswith(f"{split}-")))
    if not files:
        return None
    builders = {LOCAL_BUILDERS[os.path.splitext(f)[1]] for f in files}
    if len(builders) > 1:
        raise UsageError(f"--data_dir: {folder} mixes JSON and Parquet files for the {split} split: {files}")
    return load_dataset(builders.pop(), data_files={split: files}, cache_dir=cache_dir)[split]


def check_schema(dataset: Dataset, lang: str, where: str) -> None:
    """Rows must be {"translation": {lang: str, "en": str}}; fail early naming what was found instead."""
    if "translation" not in dataset.column_names:
        raise UsageError(f"{where}: expected a 'translation' column holding {{{lang!r}: ..., {PIVOT!r}: ...}}; "
                         f"found columns {dataset.column_names}")
    if len(dataset) == 0:
        raise UsageError(f"{where} is empty")
    first = dataset[0]["translation"]
    missing = [x for x in (lang, PIVOT) if not isinstance(first, dict) or x not in first]
    if missing:
        raise UsageError(f"{where}: 'translation' has no {', '.join(map(repr, missing))} entry; first row: {first!r}")


def first_rows(dataset: Dataset, limit: int | None) -> Dataset:
    """The first `limit` rows (all when None): `--max_*_samples` count sentence pairs per language pair."""
    return dataset if limit is None else dataset.select(range(min(limit, len(dataset))))


def mix(datasets: list[Dataset]) -> Dataset:
    """One training set from the directional sets (the Trainer's sampler shuffles them together)."""
    return concatenate_datasets(datasets) if len(datasets) > 1 else datasets[0]
