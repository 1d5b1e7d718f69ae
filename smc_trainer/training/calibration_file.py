"""`--calibration_file`: calibration examples from a file of the user's instead of the training split.

The file holds examples in the task's own training-file schema (what `--train_file` takes for that task), so the
task tokenizes them exactly like training examples and the model runs its usual forward pass on them (GTS needs
its equations, a multiple-choice model its choices):

- arithmetic recipes: a CSV with the columns Question, Numbers, Equation (the SVAMP authors' layout);
- multiple-choice recipes and quickstart: JSON (an array of objects), JSON Lines (one object a line) or CSV, in
  the canonical schema (question, choices, label; optional context) or a schema the recipe maps.

`check_calibration_file` runs when the flags are parsed: a missing, empty or badly formed file is refused before
any weights load; the task checks its columns when it reads the file, before it loads the model.
"""

from __future__ import annotations

import csv
import json
import os

from smc_trainer.errors import MissingFileError, UsageError

FORMATS = (".json", ".jsonl", ".csv")
# task families whose examples a calibration file can hold, with the format each expects
TASK_FORMATS = {
    "arithmetic": "a CSV with the columns Question, Numbers, Equation",
    "multiple_choice": "JSON, JSON Lines or CSV examples in the canonical schema (question, choices, label)",
    "quickstart": "JSON, JSON Lines or CSV examples in the canonical schema (question, choices, label)",
}


def check_calibration_file(path: str) -> int:
    """The number of examples in `path`; MissingFileError or UsageError (naming the file and what is wrong) for a
    missing, empty or badly formed file."""
    if not os.path.isfile(path):
        raise MissingFileError(f"--calibration_file {path!r} does not exist (or is not a file)")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FORMATS:
        raise UsageError(f"--calibration_file must end in {', '.join(FORMATS)}; got {path!r}")
    if os.path.getsize(path) == 0:
        raise UsageError(f"--calibration_file {path!r} is empty")
    count = {".json": _count_json, ".jsonl": _count_jsonl, ".csv": _count_csv}[suffix](path)
    if count == 0:
        raise UsageError(f"--calibration_file {path!r} holds no examples")
    return count


def _count_json(path: str) -> int:
    with open(path, encoding="utf-8") as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as err:
            raise UsageError(f"--calibration_file {path!r} is not valid JSON ({err})") from None
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise UsageError(f"--calibration_file {path!r} must hold a JSON array of objects (one per example)")
    return len(data)


def _count_jsonl(path: str) -> int:
    count = 0
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UsageError(f"--calibration_file {path!r}, line {number}: not valid JSON ({err})") from None
            if not isinstance(row, dict):
                raise UsageError(f"--calibration_file {path!r}, line {number}: expected a JSON object (one example)")
            count += 1
    return count


def _count_csv(path: str) -> int:
    with open(path, encoding="utf-8", newline="") as fh:
        rows = csv.reader(fh)
        header = next(rows, None)
        if not header or not any(cell.strip() for cell in header):
            raise UsageError(f"--calibration_file {path!r} has no CSV header row")
        count = 0
        for number, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise UsageError(f"--calibration_file {path!r}, row {number}: {len(row)} fields where the header has "
                                 f"{len(header)}")
            count += 1
    return count


def check_task_support(task: str) -> None:
    """Refuse --calibration_file for a task family whose examples it cannot hold yet (before anything loads)."""
    if task not in TASK_FORMATS:
        raise UsageError(f"--calibration_file is supported for the {', '.join(TASK_FORMATS)} tasks; the {task} task "
                         "calibrates on --calibration_samples examples of its training split (leave the flag out)")
