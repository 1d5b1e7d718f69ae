"""`--executor slurm`: every fine-tune is a Slurm job submitted with submitit; runs ready together form
one job array (`--slurm_array_parallelism` caps how many of it run at once).

Slurm jobs outlive the driver. The driver therefore notes each submitted job (`sweep_jobs.jsonl` in
`--slurm_folder`, written by the driver alone) and a rerun of the same command re-attaches to a run's
job that is still queued or running, takes the result of one that finished meanwhile, and submits
anew only what has no live or successful job. `--slurm_cluster local` runs the same jobs as local
processes through submitit's LocalExecutor (how the tests run it).
"""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING

from transformers.utils import logging

from smc_trainer.runs.executors.driver import Result
from smc_trainer.runs.executors.node import package_parent
from smc_trainer.runs.run_config import RunOutcome
from smc_trainer.runs.sweep_graph import RunSpec

if TYPE_CHECKING:  # submitit is an optional extra (.[slurm]): imported where a Slurm backend is built
    import submitit

logger = logging.get_logger(__name__)

Runner = Callable[[RunSpec], RunOutcome]
JOBS_FILE = "sweep_jobs.jsonl"
CLUSTERS = ("slurm", "local")
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED",
                 "REQUEUE_HOLD", "REQUEUE_FED", "STAGE_OUT", "SIGNALING"}


class SlurmBackend:
    """Jobs through `submitit.AutoExecutor` (cluster `slurm` or `local`); re-attaches to a killed driver's jobs."""

    capacity = None

    def __init__(self, runner: Runner, folder: str, cluster: str = "slurm", partition: str | None = None,
                 time_min: int = 24 * 60, cpus_per_run: int = 1, gpus_per_run: int = 0, mem_gb: float | None = None,
                 array_parallelism: int | None = None, setup: Sequence[str] = (), poll_s: float | None = None):
        self.runner = runner
        self.cluster = cluster
        self.name = f"slurm ({cluster}, jobs in {folder})"
        self.folder = folder
        self.poll_s = poll_s if poll_s is not None else (0.5 if cluster == "local" else 15.0)
        os.makedirs(folder, exist_ok=True)
        import submitit

        self.executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        lines = [f"export PYTHONPATH={shlex.quote(package_parent())}${{PYTHONPATH:+:$PYTHONPATH}}", *setup]
        params = {"name": "smc-trainer-run", "timeout_min": time_min, "cpus_per_task": cpus_per_run,
                  "gpus_per_node": gpus_per_run, "mem_gb": mem_gb, "slurm_partition": partition,
                  "slurm_array_parallelism": array_parallelism, "slurm_setup": lines, "local_setup": lines}
        self.executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
        self.jobs_path = os.path.join(folder, JOBS_FILE)
        self.previous = read_jobs(self.jobs_path)

    def submit(self, specs: Sequence[RunSpec]) -> list[Hashable]:
        handles: list[submitit.Job | None] = [self._reattach(spec.key) for spec in specs]
        new = [i for i, h in enumerate(handles) if h is None]
        if new:
            with self.executor.batch():  # one job array on Slurm
                jobs = [self.executor.submit(self.runner, specs[i]) for i in new]
            with open(self.jobs_path, "a", encoding="utf-8") as fh:
                for i, job in zip(new, jobs, strict=True):
                    handles[i] = job
                    fh.write(json.dumps({"key": specs[i].key, "job_id": job.job_id}) + "\n")
        return handles

    def wait(self, handles: Sequence[Hashable]) -> list[tuple[Hashable, Result]]:
        while True:
            done = [job for job in handles if self._finished(job)]
            if done:
                return [(job, _result(job)) for job in done]
            time.sleep(self.poll_s)

    def close(self) -> None:
        """Nothing to stop: jobs of an interrupted driver keep running and a rerun re-attaches to them."""

    def _job(self, job_id: str) -> submitit.Job:
        import submitit

        job_class = submitit.LocalJob if self.cluster == "local" else submitit.SlurmJob
        return job_class(self.folder, job_id)

    def _finished(self, job: submitit.Job) -> bool:
        if self.cluster == "local":  # the job's controller exits only after the result file is written
            return not local_job_alive(job.job_id)
        return job.done()

    def _reattach(self, key: str) -> submitit.Job | None:
        """A previous driver's job for `key` that is still queued or running, or that finished successfully."""
        job_id = self.previous.pop(key, None)
        if job_id is None:
            return None
        job = self._job(job_id)
        if not self._finished(job) and (self.cluster == "local" or job.state in ACTIVE_STATES):
            logger.info(f"re-attached to job {job_id} of {key}, still queued or running")
            return job
        if isinstance(_result(job), RunOutcome):
            logger.info(f"re-attached to job {job_id} of {key}, finished meanwhile")
            return job
        return None


def _result(job: submitit.Job) -> Result:
    try:
        return job.result()
    except Exception as err:  # noqa: BLE001 - a failed job (its traceback is in the message)
        return err


def read_jobs(path: str) -> dict[str, str]:
    """key -> the last job id submitted for it (a partial last line from a killed driver is ignored)."""
    jobs: dict[str, str] = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                jobs[entry["key"]] = str(entry["job_id"])
    return jobs


def local_job_alive(job_id: str) -> bool:
    """Whether the local job's controller process (its id is the job id) still runs; zombies count as ended."""
    try:
        with open(f"/proc/{int(job_id)}/stat", encoding="utf-8") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{int(job_id)}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except (OSError, ValueError, IndexError):
        return False
    return state not in ("Z", "X") and b"submitit" in cmdline
