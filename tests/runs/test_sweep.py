"""Sweeps: the planner's fine-tune count, early errors, and crash-proof resumption."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smc_trainer.runs.ledger import Ledger
from smc_trainer.runs.sweep import PAPER_GRID, SweepArguments, make_plan, module_groups_from, run_sweep

ROOT = Path(__file__).resolve().parents[2]
PAPER_METHODS = ["omp_after", "random_after", "lth", "lrr", "gmp", "omp_before", "random_before", "snip", "rigl",
                 "set"]
TINY = ["--model_name_or_path", "tiny", "--max_steps", "3", "--num_synthetic_examples", "48",
        "--max_eval_samples", "16", "--per_device_train_batch_size", "8", "--report_to", "none", "--use_cpu"]


def test_paper_grid_plan_is_the_cheapest_schedule():
    plan = make_plan(["csqa"], PAPER_METHODS, PAPER_GRID, [0])
    by_kind = {}
    for job in plan.jobs:
        by_kind.setdefault(job.kind, []).append(job)
    assert len(by_kind["dense"]) == 1
    chains = {j.method: j for j in by_kind["chain"]}
    assert set(chains) == {"lth", "lrr"} and all(len(j.sparsities) == 10 for j in chains.values())
    assert len(by_kind["single"]) == 8 * 10
    assert plan.fine_tunes == 1 + 10 + 10 + 80 == 101
    assert "101 fine-tunes" in plan.describe()
    # two seeds and two recipes scale linearly; dense is still shared inside each (recipe, seed)
    assert make_plan(["csqa", "race"], PAPER_METHODS, PAPER_GRID, [0, 1]).fine_tunes == 4 * 101


def test_plan_without_dense_consumers_trains_no_dense():
    plan = make_plan(["quickstart"], ["gmp", "snip"], [0.2, 0.36, 0.488], [0])
    assert plan.fine_tunes == 6 and all(j.kind == "single" for j in plan.jobs)


def test_rounded_paper_sparsities_snap_to_the_exact_grid():
    plan = make_plan(["q"], ["gmp"], [0.59, 0.8325], [0])
    assert [j.sparsities[0] for j in plan.jobs] == [pytest.approx(1 - 0.8**4), pytest.approx(1 - 0.8**8)]


def test_bad_sweeps_fail_before_anything_trains(tmp_path, monkeypatch):
    import smc_trainer.runs.sweep as sweep

    monkeypatch.setattr(sweep, "execute", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ValueError, match="sparse_method must be one of"):
        run_sweep(SweepArguments(methods="gmp,magnitude", sweep_dir=str(tmp_path)), TINY)
    with pytest.raises(ValueError, match="recipe must be one of"):
        run_sweep(SweepArguments(recipes="quickstart,nope", sweep_dir=str(tmp_path)), TINY)
    with pytest.raises(ValueError, match="not reached by iterative pruning"):
        run_sweep(SweepArguments(methods="lth", sparsities="0.5", sweep_dir=str(tmp_path)), TINY)
    bad_ledger = tmp_path / "results.jsonl"
    bad_ledger.write_text("not a ledger\n")
    with pytest.raises(ValueError, match="not an smc-trainer ledger"):
        run_sweep(SweepArguments(sweep_dir=str(tmp_path), sweep_ledger=str(bad_ledger)), TINY)
    assert bad_ledger.read_text() == "not a ledger\n"


def _sweep_cmd(sweep_dir: Path) -> list[str]:
    return [sys.executable, str(ROOT / "run_smc.py"), "sweep", "--recipes", "quickstart",
            "--methods", "gmp,omp_before", "--sparsities", "0.2,0.36,0.488", "--sweep_dir", str(sweep_dir),
            *TINY, "--disable_tqdm", "true"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def _keys(sweep_dir: Path) -> list[str]:
    return [r["key"] for r in Ledger(str(sweep_dir / "ledger.jsonl")).records()]


def _wait_for_records(path: Path, proc: subprocess.Popen, n: int, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= n + 1:  # header + n records
            return
        time.sleep(0.05)
    pytest.fail(f"sweep did not record {n} runs in time (exit code {proc.poll()})")


def _start_sweep_until(sweep_dir: Path, n_records: int) -> subprocess.Popen:
    """Start a sweep in the background and return once its ledger holds `n_records` records."""
    proc = subprocess.Popen(_sweep_cmd(sweep_dir), env=_env(), cwd=sweep_dir.parent, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_for_records(sweep_dir / "ledger.jsonl", proc, n_records)
    return proc


def test_killed_sweep_resumes_and_matches_a_clean_run(tmp_path):
    clean = tmp_path / "clean"
    subprocess.run(_sweep_cmd(clean), check=True, env=_env(), cwd=tmp_path, capture_output=True, timeout=600)
    clean_keys = _keys(clean)
    assert len(clean_keys) == 6 and len(set(clean_keys)) == 6
    assert (clean / "report" / "results.md").is_file() and (clean / "report" / "quickstart.png").is_file()

    killed = tmp_path / "killed"
    proc = _start_sweep_until(killed, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    partial = _keys(killed)
    assert 2 <= len(partial) < 6

    rerun = subprocess.run(_sweep_cmd(killed), env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    final = _keys(killed)
    assert final[: len(partial)] == partial, "finished records must be kept as they were"
    assert sorted(final) == sorted(clean_keys) and len(final) == len(set(final))
    assert f"{len(partial)} finished run(s) on record" in rerun.stdout + rerun.stderr

    again = subprocess.run(_sweep_cmd(killed), env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and _keys(killed) == final  # nothing left to run, nothing duplicated


def test_interrupted_sweep_leaves_a_valid_ledger(tmp_path):
    sweep_dir = tmp_path / "sigint"
    proc = _start_sweep_until(sweep_dir, 1)
    proc.send_signal(signal.SIGINT)
    proc.wait(120)
    records = Ledger(str(sweep_dir / "ledger.jsonl")).records()  # parses: no torn record
    assert 1 <= len(records) <= 6


def test_table1_preset_expands_to_the_papers_groups_and_mixes_with_named_groups():
    assert module_groups_from("table1") == ["qkvo_ffn", "qkv", "qk", "qv", "kv"]
    assert module_groups_from("ffn, TABLE1,qk") == ["ffn", "qkvo_ffn", "qkv", "qk", "qv", "kv"]
    assert module_groups_from(None) == [None]
    with pytest.raises(ValueError, match=r"--module_groups must combine .*got 'table2'"):
        module_groups_from("table2")
