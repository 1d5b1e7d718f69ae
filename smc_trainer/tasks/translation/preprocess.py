"""Token ids for one translation direction: source and target text wrapped with `</s>` and language codes."""

from __future__ import annotations

from typing import Any

from datasets import Dataset

from smc_trainer.tasks.translation.languages import LanguageCodes


def encode_batch(batch: dict[str, list], source: str, target: str, tokenizer: Any, codes: LanguageCodes,
                 max_source_length: int, max_target_length: int) -> dict[str, list]:
    """input_ids / attention_mask for the source side, labels (with the target's code) for the target side."""
    pairs = batch["translation"]
    sources = tokenizer([p[source] for p in pairs], add_special_tokens=False)["input_ids"]
    targets = tokenizer([p[target] for p in pairs], add_special_tokens=False)["input_ids"]
    input_ids = [codes.wrap(ids, source, max_source_length) for ids in sources]
    return {
        "input_ids": input_ids,
        "attention_mask": [[1] * len(ids) for ids in input_ids],
        "labels": [codes.wrap(ids, target, max_target_length) for ids in targets],
    }


def encode_direction(dataset: Dataset, source: str, target: str, tokenizer: Any, codes: LanguageCodes,
                     max_lengths: tuple[int, int], data_args: Any, training_args: Any) -> Dataset:
    """Tokenize `dataset` (OPUS-100 rows) for `source` -> `target`; only the model's columns are kept."""
    with training_args.main_process_first(desc=f"{source}-{target} tokenization"):
        return dataset.map(
            encode_batch,
            batched=True,
            fn_kwargs={"source": source, "target": target, "tokenizer": tokenizer, "codes": codes,
                       "max_source_length": max_lengths[0], "max_target_length": max_lengths[1]},
            remove_columns=dataset.column_names,
            num_proc=data_args.preprocessing_num_workers,
            load_from_cache_file=not data_args.overwrite_cache,
            desc=f"Tokenizing {source}-{target}",
        )
