"""The recipes' rows as causal-LM inputs: choice requests, few-shot arithmetic prompts, fine-tuning pairs.

Rows are what the existing loaders produce: canonical multiple-choice rows (`multiple_choice_schemas`:
question, choices, label, optional context) and the SVAMP authors' arithmetic rows (Question with number0,
number1, ... placeholders, Numbers, Equation). The formats are lm-evaluation-harness's:

- CSQA: "Question: <question>\\nAnswer:" then " <choice>" (lm-eval's cloze form of a multiple-choice task).
- RACE: "Article: <article>\\n\\n<question>" then " <option>"; a cloze question ("... _ ...") is cut at its blank
  and the option with the rest of the sentence is the continuation.
- WinoGrande (partial scoring): the sentence up to the blank with the option filled in, then " <the rest>", the
  same continuation for both options.
- Arithmetic: "Question: <question>\\nAnswer: <number>\\n\\n" per shot, then "Question: <question>\\nAnswer:".
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from smc_trainer.errors import UsageError
from smc_trainer.tasks.arithmetic.data import PLACEHOLDER, gold_value
from smc_trainer.tasks.causal_lm.scoring import ChoiceRequest
from smc_trainer.tasks.multiple_choice_schemas import BLANK, winogrande_label

Row = Mapping[str, Any]
TASK_KINDS = ("multiple_choice", "winogrande", "arithmetic")
"""`training_pairs`' task kinds: CSQA and RACE rows, WinoGrande rows, arithmetic rows."""
ANSWER_DECIMALS = 4
"""Shot answers are rounded to 4 decimals: within the answer check's 1e-4 of the exact value."""


# ---- multiple choice ----------------------------------------------------------------------------


def csqa_request(row: Row) -> ChoiceRequest:
    """The cloze form: "Question: <question>\\nAnswer:" and " <choice>" per choice (lm-eval's MultipleChoiceTask)."""
    context = f"Question: {row['question'].strip()}\nAnswer:"
    return ChoiceRequest(tuple(context for _ in row["choices"]), tuple(f" {c}" for c in row["choices"]),
                         int(row["label"]))


def csqa_requests(rows: Iterable[Row]) -> list[ChoiceRequest]:
    return [csqa_request(row) for row in rows]


def _articles(row: Row) -> list[str]:
    context = row.get("context")
    if context is None:
        raise UsageError(f"a RACE row needs its article as `context`; got the row of question {row['question']!r}")
    return list(context) if isinstance(context, list) else [context] * len(row["choices"])


def race_split(question: str, candidate: str) -> tuple[str, str]:
    """(the question's part of the context, the continuation) of one canonical RACE choice.

    The canonical choice is the question followed by the option, or a cloze question with the option in its blank
    (`race_candidate`); the continuation is " <option>", or for a cloze " <option and the rest of the sentence>".
    A choice that does not start with its question (bare options) is the option itself.
    """
    text = " ".join(question.split())
    if "_" in text:
        text = BLANK.split(text, maxsplit=1)[0].strip()
    if text and candidate.startswith(f"{text} "):
        return text, candidate[len(text):]
    if not text:
        return "", f" {candidate}"
    return " ".join(question.split()), f" {candidate}"


def race_request(row: Row) -> ChoiceRequest:
    """lm-eval's race: "Article: <article>\\n\\n<question>" and " <option>" per choice."""
    contexts, continuations = [], []
    for article, candidate in zip(_articles(row), row["choices"]):
        question, continuation = race_split(row["question"], candidate)
        contexts.append(f"Article: {article.strip()}\n\n{question}")
        continuations.append(continuation)
    return ChoiceRequest(tuple(contexts), tuple(continuations), int(row["label"]))


def race_requests(rows: Iterable[Row]) -> list[ChoiceRequest]:
    return [race_request(row) for row in rows]


def _winogrande_parts(row: Row) -> tuple[str, list[str], str, int]:
    """(the sentence before the blank, the options, the text after the blank, label) of a canonical WinoGrande row
    (question = the sentence with its "_", choices = option + the rest, as `winogrande_segments` makes them) or of a
    raw one (sentence, option1, option2, answer)."""
    if "sentence" in row:
        sentence, options, label = row["sentence"], [str(row["option1"]), str(row["option2"])], \
            winogrande_label(row["answer"])
    else:
        sentence, label = row["question"], int(row["label"])
        tail = sentence[sentence.find("_") + 1:].rstrip() if "_" in sentence else ""
        options = []
        for choice in row["choices"]:
            if not choice.endswith(tail) or len(choice) == len(tail):
                raise UsageError(f"WinoGrande choice {choice!r} does not end with the text after the blank of "
                                 f"{sentence!r}")
            options.append(choice[:len(choice) - len(tail)])
    blank = sentence.find("_")
    if blank < 0:
        raise UsageError(f"WinoGrande sentence has no blank '_' to fill: {sentence!r}")
    return sentence[:blank], [o.strip() for o in options], sentence[blank + 1:], label


def winogrande_request(row: Row) -> ChoiceRequest:
    """lm-eval's winogrande (partial scoring): context = the sentence up to the blank with the option in it,
    continuation = " " + the stripped rest of the sentence, shared by the options."""
    before, options, after, label = _winogrande_parts(row)
    continuation = f" {after.strip()}"
    return ChoiceRequest(tuple(before + o for o in options), tuple(continuation for _ in options), label)


def winogrande_requests(rows: Iterable[Row]) -> list[ChoiceRequest]:
    return [winogrande_request(row) for row in rows]


# ---- arithmetic ---------------------------------------------------------------------------------


def format_number(value: float, decimals: int | None = None) -> str:
    """A number as a person writes it: 8.0 -> "8", 0.5 -> "0.5"; `decimals` rounds first."""
    if decimals is not None:
        value = round(value, decimals)
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return repr(value)


_SPACED_PUNCTUATION = re.compile(r" (?=[.,?!;:](?:\s|$))| (?='s\b)")


def arithmetic_question(row: Row) -> str:
    """The question with its numbers in place of number0, number1, ... (full precision) and the data's spaces before
    punctuation removed ("cake . The" -> "cake. The")."""
    numbers = row["Numbers"].split()

    def number(match: re.Match) -> str:
        k = int(match.group(1))
        if k >= len(numbers):
            raise UsageError(f"question {row['Question'][:80]!r} names number{k} but has {len(numbers)} numbers")
        return format_number(float(numbers[k]))

    return _SPACED_PUNCTUATION.sub("", PLACEHOLDER.sub(number, row["Question"])).strip()


def arithmetic_answer(row: Row) -> float:
    """The value of the gold equation (the arithmetic task's reference; its Answer column is rounded in places)."""
    return gold_value(row["Question"], row["Numbers"], row["Equation"], "arithmetic")[1]


def _shot(row: Row) -> str:
    return f"Question: {arithmetic_question(row)}\nAnswer: {format_number(arithmetic_answer(row), ANSWER_DECIMALS)}"


def arithmetic_prompts(shot_rows: Sequence[Row], rows: Iterable[Row], *, shots: int = 4,
                       seed: int = 0) -> tuple[list[str], list[float]]:
    """(prompts, reference answers): every prompt has the same `shots` worked examples, drawn from `shot_rows` (the
    training split) with `seed`, then the question and "Answer:"."""
    if not isinstance(shots, int) or not 0 <= shots <= len(shot_rows):
        raise UsageError(f"shots must be an integer in [0, {len(shot_rows)}] (the shot rows); got {shots!r}")
    drawn = random.Random(seed).sample(range(len(shot_rows)), shots)
    header = "".join(f"{_shot(shot_rows[i])}\n\n" for i in drawn)
    prompts, answers = [], []
    for row in rows:
        prompts.append(f"{header}Question: {arithmetic_question(row)}\nAnswer:")
        answers.append(arithmetic_answer(row))
    return prompts, answers


# ---- fine-tuning pairs --------------------------------------------------------------------------


def _gold_pair(request: ChoiceRequest) -> tuple[str, str]:
    return request.contexts[request.label], request.continuations[request.label]


def training_pairs(task_kind: str, rows: Iterable[Row]) -> list[tuple[str, str]]:
    """(prompt, gold continuation) per labeled example, in the format the task is evaluated in, for a causal-LM
    loss on the continuation: CSQA / RACE ("multiple_choice": RACE when the row has an article as context),
    WinoGrande, or arithmetic (the zero-shot prompt and " <answer>\\n", the newline that ends a generated answer)."""
    if task_kind not in TASK_KINDS:
        raise UsageError(f"task_kind must be one of {', '.join(TASK_KINDS)}; got {task_kind!r}")
    if task_kind == "arithmetic":
        return [(f"Question: {arithmetic_question(row)}\nAnswer:",
                 f" {format_number(arithmetic_answer(row), ANSWER_DECIMALS)}\n") for row in rows]
    build = winogrande_request if task_kind == "winogrande" else _multiple_choice_request
    requests = (build(row) for row in rows)
    return [_gold_pair(r) for r in requests if r.label >= 0]


def _multiple_choice_request(row: Row) -> ChoiceRequest:
    return race_request(row) if row.get("context") else csqa_request(row)


__all__ = [
    "ANSWER_DECIMALS",
    "TASK_KINDS",
    "arithmetic_answer",
    "arithmetic_prompts",
    "arithmetic_question",
    "csqa_request",
    "csqa_requests",
    "format_number",
    "race_request",
    "race_requests",
    "race_split",
    "training_pairs",
    "winogrande_request",
    "winogrande_requests",
]
