"""`--executor ray`: every fine-tune is a Ray task on a Ray cluster (`--ray_address auto|HOST:PORT`).

Ray places the tasks by their resources (`--cpus_per_run`, `--gpus_per_run`) and queues what does
not fit; the driver releases a task once the runs it depends on are recorded. Without an address a
local Ray instance is started for the sweep (`--ray_num_cpus` caps it) and stopped after it. Tasks
are owned by the driver: when the driver dies, Ray stops them, and rerunning the same command
skips what the ledger holds and resumes the rest from their checkpoints in the shared `--sweep_dir`.
Workers import smc_trainer from the driver's installation folder when they can see it (a shared
file system), else from their own installation.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Sequence

import ray

from smc_trainer.runs.executors.driver import Result
from smc_trainer.runs.executors.node import package_parent
from smc_trainer.runs.run_config import RunOutcome
from smc_trainer.runs.sweep_graph import RunSpec

Runner = Callable[[RunSpec], RunOutcome]


def _run_spec(runner: Runner, spec: RunSpec) -> RunOutcome:
    return runner(spec)


class RayBackend:
    """Ray tasks, submitted as their dependencies finish; Ray queues them by resources."""

    capacity = None

    def __init__(self, runner: Runner, address: str | None, num_cpus: int | None, cpus_per_run: float,
                 gpus_per_run: float):
        self.runner = runner
        self.started = not ray.is_initialized()
        if self.started:
            path = os.pathsep.join(p for p in (package_parent(), os.environ.get("PYTHONPATH")) if p)
            ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                     runtime_env={"env_vars": {"PYTHONPATH": path}}, log_to_driver=True)
        self.name = f"ray ({address or 'local instance'})"
        self.task = ray.remote(_run_spec).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run,
                                                  name="smc-trainer-run")

    def submit(self, specs: Sequence[RunSpec]) -> list[Hashable]:
        return [self.task.remote(self.runner, spec) for spec in specs]

    def wait(self, handles: Sequence[Hashable]) -> list[tuple[Hashable, Result]]:
        ready, _ = ray.wait(list(handles), num_returns=1)
        results: list[tuple[Hashable, Result]] = []
        for ref in ready:
            try:
                results.append((ref, ray.get(ref)))
            except Exception as err:  # noqa: BLE001 - a failed run; the driver records it and stops starting runs
                results.append((ref, err))
        return results

    def close(self) -> None:
        if self.started:
            ray.shutdown()
