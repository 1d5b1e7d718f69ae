"""The results ledger: an append-only JSON-lines file, one record per finished run.

Why JSON lines: a record is appended with one `write` under an exclusive `flock`, then fsynced,
so two sweeps sharing a ledger never interleave, and a process killed mid-write leaves at most a
partial last line, which readers skip (and the next append starts on a fresh line). The file is
never rewritten or truncated by this module. The first line is a header naming the format, so a
file that is not a ledger is refused instead of being appended to.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from transformers.utils import logging

from smc_trainer.errors import UsageError

logger = logging.get_logger(__name__)

FORMAT = "smc-trainer-ledger"
SCHEMA_VERSION = 1
REQUIRED_FIELDS = ("key", "recipe", "method", "target_sparsity", "seed", "metrics")


class LedgerError(ValueError):
    """The file is not a ledger, or its records do not match this version's schema."""


@dataclass
class Ledger:
    """Append-only results file. `records()` reads it; `append()` adds one finished run."""

    path: str

    def _header(self) -> dict[str, Any]:
        return {"format": FORMAT, "schema_version": SCHEMA_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record atomically with respect to other writers (flock + single write + fsync)."""
        missing = [f for f in REQUIRED_FIELDS if f not in record]
        if missing:
            raise UsageError(f"ledger record lacks required fields {missing}")
        line = json.dumps({"schema_version": SCHEMA_VERSION, **record}, sort_keys=True, default=_json_default)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            prefix = ""
            if size == 0:
                prefix = json.dumps(self._header(), sort_keys=True) + "\n"
            else:
                self._check_header_fd(fd)
                os.lseek(fd, size - 1, os.SEEK_SET)
                if os.read(fd, 1) != b"\n":  # a writer was killed mid-line: start a fresh line
                    prefix = "\n"
            os.write(fd, (prefix + line + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _check_header_fd(self, fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        first = b""
        while not first.endswith(b"\n"):
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            first += chunk
            if len(first) > 1 << 16:
                break
        self._check_header(first.split(b"\n", 1)[0].decode("utf-8", errors="replace"))

    def _check_header(self, first_line: str) -> None:
        try:
            header = json.loads(first_line)
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise LedgerError(f"{self.path} is not an smc-trainer ledger (its first line is not a ledger header); "
                              "refusing to read or append to it. Pass a new path with --ledger.")
        if header.get("schema_version") != SCHEMA_VERSION:
            raise LedgerError(f"{self.path} uses ledger schema {header.get('schema_version')}, this version of "
                              f"smc-trainer writes schema {SCHEMA_VERSION}; use a new --ledger path")

    def records(self) -> list[dict[str, Any]]:
        """All complete records, in file order. A partial last line (killed writer) is skipped."""
        return list(self._iter_records())

    def _iter_records(self) -> Iterator[dict[str, Any]]:
        if not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8") as fh:
            lines = fh.read().split("\n")
        if not lines or not lines[0].strip():
            return
        self._check_header(lines[0])
        for number, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # only an interrupted writer leaves such a line; appends resume after it
                logger.warning(f"{self.path}:{number}: skipping a line cut short by an interrupted writer")
                continue
            self._check_record(record, number)
            yield record

    def _check_record(self, record: Any, number: int) -> None:
        if not isinstance(record, dict):
            raise LedgerError(f"{self.path}:{number} is not a ledger record")
        if record.get("schema_version") != SCHEMA_VERSION:
            raise LedgerError(f"{self.path}:{number} has schema {record.get('schema_version')}, expected "
                              f"{SCHEMA_VERSION}; this ledger was written by another version of smc-trainer")
        missing = [f for f in REQUIRED_FIELDS if f not in record]
        if missing:
            raise LedgerError(f"{self.path}:{number} lacks fields {missing}; it does not match the current schema")

    def done_keys(self) -> set[str]:
        return {r["key"] for r in self.records()}


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
