"""Source schemas of multiple-choice datasets, converted to one canonical schema by small adapters.

Canonical example (what tokenization, collation and the metric see):

- `question` (str): the question as asked.
- `choices` (list[str]): the candidates. Without a `context` each is encoded as the pair
  (`Q: <question>`, `A: <choice>`), as in the paper's fairseq inputs. With a `context` each choice is
  the full second segment the model reads (WinoGrande: the option and the rest of the sentence; RACE:
  the question with the option), and the context is the first segment.
- `label` (int): index of the right choice, -1 when unlabeled (hidden test labels).
- `context` (optional; str shared by the choices, or list[str] with one per choice): the only text
  that truncation may cut (WinoGrande: the sentence before the blank; RACE: the article).
- `subset` (optional str): named evaluation subset of the row (RACE: `middle` / `high`).

Adapters are tried in order; the first whose detector accepts the columns converts the dataset.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from datasets import Dataset
from transformers.utils import logging

from smc_trainer.errors import UsageError

logger = logging.get_logger(__name__)

CANONICAL_COLUMNS = ("question", "choices", "label")
OPTIONAL_COLUMNS = ("context", "subset")
LETTERS = "ABCDEFGHIJ"
BLANK = re.compile(r"_+")  # RACE cloze blanks are one or more underscores


# ---- detectors: which schema a dataset is in -------------------------------------------------------


def _is_canonical(columns: set[str], example: dict[str, Any]) -> bool:
    return set(CANONICAL_COLUMNS) <= columns and isinstance(example["choices"], list)


def _is_hub_csqa(columns: set[str], example: dict[str, Any]) -> bool:
    """tau/commonsense_qa (also ARC / OpenBookQA-like): choices {label: [...], text: [...]}, answerKey."""
    return {"question", "choices", "answerKey"} <= columns and isinstance(example["choices"], dict)


def _is_original_csqa(columns: set[str], example: dict[str, Any]) -> bool:
    """The original CSQA jsonl: question {stem, choices: [{label, text}]}, answerKey."""
    return {"question", "answerKey"} <= columns and isinstance(example["question"], dict)


def _is_flat(columns: set[str], example: dict[str, Any]) -> bool:
    """CSV-friendly: question, choice0 .. choiceK, label (optional context, subset)."""
    return {"question", "choice0", "label"} <= columns


def _is_winogrande(columns: set[str], example: dict[str, Any]) -> bool:
    """allenai/winogrande and the original jsonl: sentence with one `_`, option1, option2, answer "1"/"2"/""."""
    return {"sentence", "option1", "option2", "answer"} <= columns


def _is_race(columns: set[str], example: dict[str, Any]) -> bool:
    """ehovy/race: example_id ("high123.txt"), article, question, options [4], answer "A".."D"."""
    return {"article", "question", "options", "answer"} <= columns and isinstance(example["options"], list)


# ---- converters: one source example -> one canonical example --------------------------------------


def _label_of(key: str | None, labels: list[str]) -> int:
    return labels.index(key) if key and key in labels else -1


def _optional(ex: dict[str, Any]) -> dict[str, Any]:
    """The optional canonical columns the source carries (the same keys for every row of a dataset)."""
    return {k: ex[k] for k in OPTIONAL_COLUMNS if k in ex}


def _from_canonical(ex: dict[str, Any]) -> dict[str, Any]:
    label = ex["label"]
    return {"question": ex["question"], "choices": list(ex["choices"]), "label": -1 if label is None else int(label),
            **_optional(ex)}


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
    return {"question": ex["question"], "choices": choices, "label": -1 if label is None else int(label),
            **_optional(ex)}


def winogrande_segments(sentence: str, options: list[str]) -> tuple[str, list[str]]:
    """Split a WinoGrande sentence at its blank: (the text before it, [option + the text after it, ...]).

    The option goes into the second segment so that truncating the first can never cut it.
    "The trophy doesn't fit in the suitcase because the _ is too big." with "trophy" gives
    ("The trophy doesn't fit in the suitcase because the", ["trophy is too big.", ...]).
    """
    blank = sentence.find("_")
    if blank < 0:
        raise UsageError(f"WinoGrande sentence has no blank '_' to fill: {sentence!r}")
    after = sentence[blank + 1:]
    return sentence[:blank].strip(), [f"{option.strip()}{after}".strip() for option in options]


def winogrande_label(answer: Any) -> int:
    """"1"/"2" -> 0/1; "" (the hidden test labels) or a missing CSV cell -> -1."""
    if answer is None or (isinstance(answer, float) and math.isnan(answer)):
        return -1
    text = str(answer).strip()
    text = text[:-2] if text.endswith(".0") else text  # CSV readers may parse 1/2 as floats
    if text == "":
        return -1
    if text not in ("1", "2"):
        raise UsageError(f"WinoGrande answer must be '1', '2' or '' (hidden label); got {answer!r}")
    return int(text) - 1


def _from_winogrande(ex: dict[str, Any]) -> dict[str, Any]:
    context, endings = winogrande_segments(ex["sentence"], [str(ex["option1"]), str(ex["option2"])])
    return {"question": ex["sentence"], "choices": endings, "label": winogrande_label(ex["answer"]),
            "context": context}


def race_candidate(question: str, option: str) -> str:
    """The second segment of a RACE input: a cloze question (with `_`) gets the option in its blank,
    any other question is followed by the option; whitespace runs collapse to one space."""
    text = BLANK.sub(lambda _: option, question) if "_" in question else f"{question} {option}"
    return " ".join(text.split())


def race_subset(example_id: str | None) -> str | None:
    """RACE's level from its example id: "high132.txt" -> "high", "middle3.txt" -> "middle"."""
    match = re.match(r"[a-z]+", (example_id or "").strip().lower())
    return match.group(0) if match else None


def race_label(answer: str | None, num_options: int) -> int:
    """"A".."D" -> 0..3; an empty answer -> -1 (unlabeled)."""
    key = (answer or "").strip().upper()
    if not key:
        return -1
    letters = LETTERS[:num_options]
    if len(key) != 1 or key not in letters:
        raise UsageError(f"RACE answer must be one of {', '.join(letters)} (or empty); got {answer!r}")
    return letters.index(key)


def _from_race(ex: dict[str, Any]) -> dict[str, Any]:
    options = [str(o) for o in ex["options"]]
    return {"question": ex["question"], "choices": [race_candidate(ex["question"], o) for o in options],
            "label": race_label(ex["answer"], len(options)), "context": ex["article"],
            "subset": race_subset(ex.get("example_id"))}


Adapter = tuple[str, Callable[[set[str], dict], bool], Callable[[dict], dict]]
ADAPTERS: list[Adapter] = [
    ("canonical", _is_canonical, _from_canonical),
    ("csqa", _is_hub_csqa, _from_hub_csqa),
    ("csqa-jsonl", _is_original_csqa, _from_original_csqa),
    ("flat", _is_flat, _from_flat),
    ("winogrande", _is_winogrande, _from_winogrande),
    ("race", _is_race, _from_race),
]


def to_canonical(dataset: Dataset, where: str = "dataset") -> Dataset:
    """Convert `dataset` to the canonical schema with the first adapter that recognizes it."""
    if len(dataset) == 0:
        raise UsageError(f"{where} is empty")
    columns, first = set(dataset.column_names), dataset[0]
    for name, detect, convert in ADAPTERS:
        if detect(columns, first):
            logger.info(f"{where}: {name} schema, {len(dataset)} examples")
            converted = dataset.map(convert, remove_columns=dataset.column_names, desc=f"Reading {where}")
            check_canonical(converted, where)
            return converted
    raise UsageError(f"{where} has columns {sorted(columns)}, which no adapter recognizes; expected "
                     "question/choices/label (optional context, subset), the CSQA schema (question, "
                     "choices{label,text}, answerKey), question/choice0..choiceK/label, WinoGrande (sentence, option1, "
                     "option2, answer) or RACE (example_id, article, question, options, answer)")


def check_canonical(dataset: Dataset, where: str) -> None:
    """Every example has the same number of choices (the model scores a fixed set), a valid label and,
    when contexts are given per choice, one context per choice."""
    counts = {len(c) for c in dataset["choices"]}
    if len(counts) != 1 or min(counts) < 2:
        raise UsageError(f"{where}: every question needs the same number (>= 2) of choices; found {sorted(counts)}")
    n = counts.pop()
    bad = [y for y in dataset["label"] if not -1 <= y < n]
    if bad:
        raise UsageError(f"{where}: labels must be in [0, {n}) (or -1 for unlabeled); found {bad[0]}")
    if "context" in dataset.column_names:
        wrong = [c for c in dataset["context"] if isinstance(c, list) and len(c) != n]
        if wrong:
            raise UsageError(f"{where}: a per-choice context needs one text per choice ({n}); found {len(wrong[0])}")


__all__ = [
    "ADAPTERS",
    "CANONICAL_COLUMNS",
    "OPTIONAL_COLUMNS",
    "check_canonical",
    "race_candidate",
    "race_label",
    "race_subset",
    "to_canonical",
    "winogrande_label",
    "winogrande_segments",
]
