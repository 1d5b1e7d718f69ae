"""The sweep driver: hands ready specs to a backend (a local pool, Ray, Slurm) and records what finishes.

The backend places and runs work (its own queue, resources, job arrays); the driver only keeps the
graph's order, releasing a spec once every spec it waits for has finished, and is the one process
that sees results, so it alone appends to the ledger (`on_done`). Failure policy: after the first
failed run no new run starts, the runs in progress finish and are recorded, then the first error is
raised; rerunning the same command resumes (finished runs are in the ledger, the rest reuse their
checkpoints).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from transformers.utils import logging

from smc_trainer.runs.run_config import RunOutcome
from smc_trainer.runs.sweep_graph import RunSpec, SweepGraph

logger = logging.get_logger(__name__)

Result = RunOutcome | BaseException


class Backend(Protocol):
    """Where specs run. `capacity`: how many may run at once (None: the backend queues them itself)."""

    name: str
    capacity: int | None

    def submit(self, specs: Sequence[RunSpec]) -> list[Hashable]:
        """Start `specs` (one batch: a Slurm job array); one handle per spec, in order."""

    def wait(self, handles: Sequence[Hashable]) -> list[tuple[Hashable, Result]]:
        """Block until at least one of `handles` has finished; its outcome, or the exception it raised."""

    def close(self) -> None:
        """Release what the backend started (pool processes, a local Ray instance)."""


@dataclass
class DriveSummary:
    """What one driver invocation did: keys finished now, skipped (already recorded), failed, never started."""

    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, BaseException] = field(default_factory=dict)
    not_started: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0

    def line(self, backend: str) -> str:
        return (f"sweep summary ({backend}): {len(self.finished)} run(s) finished, {len(self.skipped)} already in the "
                f"ledger, {len(self.failed)} failed, {len(self.not_started)} not started; "
                f"{self.wall_time_s:.1f} s")


def drive(
    graph: SweepGraph,
    done: set[str],
    backend: Backend,
    on_done: Callable[[RunSpec, RunOutcome], str],
    progress: Callable[[str], None] = logger.info,
) -> DriveSummary:
    """Run every spec of `graph` whose key is not in `done`, dependencies first; `on_done` records one
    finished run (in the driver) and returns a short text for its progress line."""
    started = time.perf_counter()
    summary = DriveSummary(skipped=[s.key for s in graph.specs if s.key in done])
    finished = set(done)
    pending = [s for s in graph.specs if s.key not in done]
    running: dict[Hashable, RunSpec] = {}
    total = len(graph)
    if summary.skipped:
        progress(f"{len(summary.skipped)} of {total} run(s) already in the ledger: skipped")
    try:
        while pending or running:
            if not summary.failed:
                ready = graph.ready(pending, finished)
                room = len(ready) if backend.capacity is None else max(0, backend.capacity - len(running))
                batch = ready[:room]
                if batch:
                    for handle, spec in zip(backend.submit(batch), batch, strict=True):
                        running[handle] = spec
                    chosen = {s.key for s in batch}
                    pending = [s for s in pending if s.key not in chosen]
            if not running:
                break
            for handle, result in backend.wait(list(running)):
                spec = running.pop(handle)
                if isinstance(result, BaseException):
                    summary.failed[spec.key] = result
                    progress(f"FAILED {spec.describe()} ({spec.key}): {_last_line(result)}")
                    continue
                note = on_done(spec, result)
                finished.add(spec.key)
                summary.finished.append(spec.key)
                progress(f"[{len(finished)}/{total}] finished {spec.describe()} in {result.wall_time_s:.1f} s"
                         + (f": {note}" if note else ""))
    finally:
        summary.not_started = [s.key for s in pending]
        summary.wall_time_s = time.perf_counter() - started
        backend.close()
    progress(summary.line(backend.name))
    if summary.failed:
        raise next(iter(summary.failed.values()))
    return summary


def _last_line(error: BaseException) -> str:
    """The exception's type and the last line of its message (remote errors carry whole tracebacks)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"
