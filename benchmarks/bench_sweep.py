"""Sweep executors: wall time of a small grid with 1 vs K local workers, and the driver's cost per run.

    python benchmarks/bench_sweep.py [--workers 2] [--max_steps 20] [--overhead_runs 101]

Part 1 runs the same small grid (quickstart recipe, tiny from-scratch BERT; gmp, omp_before and
random_before at 3 sparsities: 9 independent fine-tunes) twice, each in a fresh sweep folder, through
`run_smc.py sweep --executor local --max_parallel 1` then `--max_parallel K`, and reports each command's
wall time and their ratio (measured in the same invocation, one after the other).

Part 2 measures what the driver itself spends per run, with no training: building the graph (one
configuration and ledger key per run) and, per finished run, making its ledger record and appending it
(flock + fsync), through `drive()` with a backend that finishes every run at once. The grid is the
paper's (10 methods x 10 sparsities on one recipe = 101 fine-tunes).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GRID = ["--recipes", "quickstart", "--methods", "gmp,omp_before,random_before", "--sparsities", "0.2,0.36,0.488"]
PAPER_METHODS = "omp_after,random_after,lth,lrr,gmp,omp_before,random_before,snip,rigl,set"


def tiny_flags(max_steps: int) -> list[str]:
    return ["--model_name_or_path", "tiny", "--max_steps", str(max_steps), "--num_synthetic_examples", "256",
            "--max_eval_samples", "64", "--per_device_train_batch_size", "8", "--report_to", "none", "--use_cpu",
            "--disable_tqdm", "true"]


def timed_sweep(workdir: Path, workers: int, max_steps: int) -> float:
    cmd = [sys.executable, str(ROOT / "run_smc.py"), "sweep", *GRID, "--sweep_dir", str(workdir / f"k{workers}"),
           "--max_parallel", str(workers), *tiny_flags(max_steps)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    result = subprocess.run(cmd, env=env, cwd=workdir, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"sweep with {workers} worker(s) failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return wall


class InstantBackend:
    """Finishes every submitted run at once with a made-up outcome: only the driver's own work is timed."""

    name, capacity = "instant", None

    def __init__(self):
        self.running = {}

    def submit(self, specs):
        handles = list(range(len(self.running), len(self.running) + len(specs)))
        self.running.update(zip(handles, specs))
        return handles

    def wait(self, handles):
        from smc_trainer.runs.run_config import RunOutcome

        out = []
        for h in handles:
            spec = self.running.pop(h)
            out.append((h, RunOutcome(method=spec.label, target_sparsity=spec.sparsity, mask_sparsity=spec.sparsity,
                                      measured_sparsity=spec.sparsity, metrics={"eval_accuracy": 0.5},
                                      output_dir=spec.run_dir, steps=1, wall_time_s=0.0)))
        return out

    def close(self):
        pass


def driver_overhead(workdir: Path) -> tuple[int, float, float]:
    """(runs, graph seconds per run, record seconds per run) on the paper grid of one recipe."""
    from smc_trainer.runs.executors.driver import drive
    from smc_trainer.runs.ledger import Ledger
    from smc_trainer.runs.sweep import PAPER_GRID, build_graph, make_plan, make_record
    from smc_trainer.runs.sweep_graph import SweepConfigs

    configs = SweepConfigs(tiny_flags(3))
    plan = make_plan(["quickstart"], PAPER_METHODS.split(","), PAPER_GRID, [0])
    started = time.perf_counter()
    graph = build_graph(plan, configs, str(workdir / "overhead"))
    graph_s = time.perf_counter() - started
    ledger = Ledger(str(workdir / "overhead" / "ledger.jsonl"))

    def record(spec, outcome) -> str:
        ledger.append(make_record(spec.config(configs), outcome, spec.key))
        return ""

    started = time.perf_counter()
    drive(graph, set(), InstantBackend(), record, progress=lambda _: None)
    record_s = time.perf_counter() - started
    return len(graph), graph_s / len(graph), record_s / len(graph)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="K of the parallel sweep")
    parser.add_argument("--max_steps", type=int, default=20, help="optimizer steps of each tiny fine-tune")
    parser.add_argument("--skip_grid", action="store_true", help="only part 2 (driver overhead)")
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
        if not ns.skip_grid:
            one = timed_sweep(workdir, 1, ns.max_steps)
            many = timed_sweep(workdir, ns.workers, ns.max_steps)
            print(f"grid of 9 fine-tunes ({ns.max_steps} steps each): --max_parallel 1: {one:.1f} s, "
                  f"--max_parallel {ns.workers}: {many:.1f} s, ratio {one / many:.2f}x "
                  f"(load average now {os.getloadavg()[0]:.2f})")
        runs, graph_s, record_s = driver_overhead(workdir)
        print(f"driver overhead on the paper grid ({runs} runs): graph {graph_s * 1e3:.1f} ms/run, "
              f"record + ledger append {record_s * 1e3:.1f} ms/run, total {(graph_s + record_s) * 1e3:.1f} ms/run")


if __name__ == "__main__":
    main()
