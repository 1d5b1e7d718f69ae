"""Real sweeps on every executor: K local workers, a real local Ray instance, submitit's LocalExecutor.

Each runs the same small sweep (quickstart recipe, tiny from-scratch BERT: a dense run, omp_after and
random_after, a 2-round LTH chain) and must end with the in-process sweep's ledger keys and metrics.
The Ray and Slurm drivers are killed (SIGKILL) once the ledger holds a record and rerun with the same
command: the rerun must train only the rest (finished runs keep their records and files untouched).
Tests needing ray or submitit skip when the extra is not installed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smc_trainer.runs.executors.slurm import JOBS_FILE, read_jobs
from smc_trainer.runs.ledger import Ledger
from smc_trainer.runs.run_config import RESULT_NAME

ROOT = Path(__file__).resolve().parents[2]
RUNS = 5  # dense, omp_after, random_after, LTH rounds 1 and 2
TINY = ["--model_name_or_path", "tiny", "--max_steps", "3", "--num_synthetic_examples", "48",
        "--max_eval_samples", "16", "--per_device_train_batch_size", "8", "--report_to", "none", "--use_cpu",
        "--disable_tqdm", "true"]
TIMING = ("runtime", "per_second", "wall_time")  # metrics that measure the machine, not the run


def sweep_cmd(sweep_dir: Path, *executor: str) -> list[str]:
    return [sys.executable, str(ROOT / "run_smc.py"), "sweep", "--recipes", "quickstart",
            "--methods", "dense,omp_after,random_after,lth", "--sparsities", "0.36", "--sweep_dir", str(sweep_dir),
            *executor, *TINY]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}


def run_sweep(sweep_dir: Path, *executor: str) -> str:
    result = subprocess.run(sweep_cmd(sweep_dir, *executor), env=env(), cwd=sweep_dir.parent, capture_output=True,
                            text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def records(sweep_dir: Path) -> list[dict]:
    return Ledger(str(sweep_dir / "ledger.jsonl")).records()


def assert_same_results(found: list[dict], reference: dict[str, dict]) -> None:
    """Same keys, each once; same sparsities and metrics (losses to float noise across processes)."""
    keys = [r["key"] for r in found]
    assert sorted(keys) == sorted(reference) and len(keys) == len(set(keys))
    for record in found:
        expected = reference[record["key"]]
        assert record["mask_sparsity"] == expected["mask_sparsity"]
        assert record["measured_sparsity"] == expected["measured_sparsity"]
        assert record["round"] == expected["round"] and record["method"] == expected["method"]
        metrics = {k: v for k, v in record["metrics"].items() if not any(t in k for t in TIMING)}
        wanted = {k: v for k, v in expected["metrics"].items() if not any(t in k for t in TIMING)}
        assert metrics.keys() == wanted.keys()
        for name, value in wanted.items():
            assert metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-6), f"{record['key']}: {name}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, dict]:
    """The plain in-process sweep's records, by key."""
    sweep_dir = tmp_path_factory.mktemp("reference") / "sweep"
    run_sweep(sweep_dir)
    found = records(sweep_dir)
    assert len(found) == RUNS
    return {r["key"]: r for r in found}


def kill_after_first_record(sweep_dir: Path, *executor: str, also=lambda: True) -> tuple[list[dict], dict[str, int]]:
    """Start the sweep, SIGKILL its driver once a run is recorded (and `also()` holds); the records then and
    their files' mtimes."""
    sweep_dir.mkdir(parents=True)
    log = open(sweep_dir.parent / "killed-driver.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(sweep_cmd(sweep_dir, *executor), env=env(), cwd=sweep_dir.parent, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    ledger = sweep_dir / "ledger.jsonl"
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            if ledger.exists() and len(ledger.read_text().splitlines()) >= 2 and also():  # header + a record
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the driver ended before it could be killed:\n{_tail(log.name)}"
        proc.send_signal(signal.SIGKILL)  # the driver only: its workers and jobs meet their own fate
        proc.wait(60)
    finally:
        log.close()
    partial = records(sweep_dir)
    assert 1 <= len(partial) < RUNS, _tail(log.name)
    return partial, {r["key"]: os.stat(Path(r["output_dir"]) / RESULT_NAME).st_mtime_ns for r in partial}


def _tail(path: str, n: int = 4000) -> str:
    return Path(path).read_text()[-n:]


def assert_rerun_trained_only_the_rest(sweep_dir: Path, partial: list[dict], mtimes: dict[str, int], output: str,
                                       reference: dict[str, dict]) -> None:
    final = records(sweep_dir)
    assert final[: len(partial)] == partial, "records written before the kill are kept as they were"
    assert_same_results(final, reference)
    assert f"{len(partial)} of {RUNS} run(s) already in the ledger: skipped" in output
    assert f"{RUNS - len(partial)} run(s) finished, {len(partial)} already in the ledger, 0 failed" in output
    for key, mtime in mtimes.items():  # a finished run is neither retrained nor rewritten
        record = next(r for r in final if r["key"] == key)
        assert os.stat(Path(record["output_dir"]) / RESULT_NAME).st_mtime_ns == mtime, key


def test_local_parallel_workers_match_the_in_process_sweep(reference, tmp_path):
    output = run_sweep(tmp_path / "sweep", "--max_parallel", "2")
    assert_same_results(records(tmp_path / "sweep"), reference)
    assert "sweep summary (local x2): 5 run(s) finished" in output


def test_ray_sweep_survives_a_killed_driver(reference, tmp_path):
    pytest.importorskip("ray")
    ray_flags = ("--executor", "ray", "--ray_num_cpus", "2")
    partial, mtimes = kill_after_first_record(tmp_path / "sweep", *ray_flags)
    output = run_sweep(tmp_path / "sweep", *ray_flags)
    assert "sweep summary (ray (local instance))" in output
    assert_rerun_trained_only_the_rest(tmp_path / "sweep", partial, mtimes, output, reference)


def test_slurm_sweep_through_submitit_reattaches_after_a_killed_driver(reference, tmp_path):
    pytest.importorskip("submitit")
    slurm_flags = ("--executor", "slurm", "--slurm_cluster", "local")
    jobs_file = tmp_path / "sweep" / "slurm" / JOBS_FILE
    # killed while jobs run: the dense run is recorded and the runs released after it are submitted
    partial, mtimes = kill_after_first_record(tmp_path / "sweep", *slurm_flags,
                                              also=lambda: jobs_file.exists() and len(read_jobs(str(jobs_file))) > 1)
    left_running = len(read_jobs(str(jobs_file))) - len(partial)
    output = run_sweep(tmp_path / "sweep", *slurm_flags)
    assert_rerun_trained_only_the_rest(tmp_path / "sweep", partial, mtimes, output, reference)
    assert output.count("re-attached to job") >= left_running >= 1
    jobs = [json.loads(line) for line in jobs_file.read_text().splitlines()]
    assert sorted(j["key"] for j in jobs) == sorted(reference), \
        "each run was submitted exactly once: the rerun re-attached to the jobs the killed driver left running"
