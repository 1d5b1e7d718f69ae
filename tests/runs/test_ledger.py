"""The ledger is append-only, survives interrupted and concurrent writers, and refuses foreign files."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from smc_trainer.runs.ledger import SCHEMA_VERSION, Ledger, LedgerError


def _record(i: int, writer: str = "a") -> dict:
    return {"key": f"{writer}-{i}", "recipe": "r", "method": "gmp", "target_sparsity": 0.2, "seed": 0,
            "metrics": {"eval_accuracy": i / 100}, "payload": "x" * 5000}


def _writer(path: str, writer: str, n: int) -> None:
    ledger = Ledger(path)
    for i in range(n):
        ledger.append(_record(i, writer))


def test_append_and_read_back(tmp_path):
    ledger = Ledger(str(tmp_path / "l.jsonl"))
    for i in range(3):
        ledger.append(_record(i))
    records = ledger.records()
    assert [r["key"] for r in records] == ["a-0", "a-1", "a-2"]
    assert all(r["schema_version"] == SCHEMA_VERSION for r in records)
    assert ledger.done_keys() == {"a-0", "a-1", "a-2"}


def test_concurrent_writers_never_interleave(tmp_path):
    path = str(tmp_path / "l.jsonl")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, w, 40)) for w in ("a", "b", "c")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    records = Ledger(path).records()
    assert len(records) == 120
    assert {r["key"] for r in records} == {f"{w}-{i}" for w in "abc" for i in range(40)}
    lines = Path(path).read_text().splitlines()
    assert len(lines) == 121 and all(json.loads(line) for line in lines)


def test_interrupted_write_is_skipped_and_next_append_starts_a_fresh_line(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = Ledger(str(path))
    ledger.append(_record(0))
    with open(path, "a") as fh:  # a writer killed mid-line
        fh.write('{"key": "half", "recipe": "r", "met')
    assert [r["key"] for r in ledger.records()] == ["a-0"]
    ledger.append(_record(1))
    assert [r["key"] for r in ledger.records()] == ["a-0", "a-1"]
    assert '{"key": "half", "recipe": "r", "met' in path.read_text()  # nothing was rewritten


def test_a_file_that_is_not_a_ledger_is_refused_and_left_intact(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text("my precious notes\n")
    ledger = Ledger(str(path))
    with pytest.raises(LedgerError, match="not an smc-trainer ledger"):
        ledger.records()
    with pytest.raises(LedgerError, match="not an smc-trainer ledger"):
        ledger.append(_record(0))
    assert path.read_text() == "my precious notes\n"


def test_records_from_another_schema_are_refused(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = Ledger(str(path))
    ledger.append(_record(0))
    with open(path, "a") as fh:
        fh.write(json.dumps({**_record(1), "schema_version": SCHEMA_VERSION + 1}) + "\n")
    with pytest.raises(LedgerError, match="schema"):
        ledger.records()
    with open(path, "a") as fh:
        fh.write("\n")
    before = path.read_text()
    with pytest.raises(LedgerError):
        ledger.records()
    assert path.read_text() == before


def test_record_missing_required_fields_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="required fields"):
        Ledger(str(tmp_path / "l.jsonl")).append({"key": "k"})
