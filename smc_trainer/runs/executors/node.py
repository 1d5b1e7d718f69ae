"""What a worker does with one `RunSpec`: the same pipeline stages as a local sweep, in any process.

`NodeRunner` is the picklable callable every executor ships (to a pool process, a Ray task, a Slurm
job). It returns the run's `RunOutcome` and never touches the ledger: the driver alone appends.
Every stage reuses finished work on disk (the dense cache, finished LTH rounds, a run folder holding
its result), so a spec re-run after a killed driver resumes instead of training again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from smc_trainer.runs.folds import over_folds
from smc_trainer.runs.pipeline import run, run_dense, run_iterative
from smc_trainer.runs.run_config import RunOutcome
from smc_trainer.runs.sweep_graph import RunSpec, SweepConfigs


def run_node(spec: RunSpec, configs: SweepConfigs) -> RunOutcome:
    """Train `spec` (reusing whatever of it is finished) and return its outcome (CV recipes: the pooled one)."""
    config = spec.config(configs)
    if spec.kind == "dense":
        return over_folds(config, spec.run_dir, lambda c, _dir, _cb: [run_dense(c)[1]])[0]
    if spec.kind == "round":  # rounds 1..k-1 are finished (they are dependencies): run_iterative reuses them
        rounds = spec.round or 1
        return over_folds(config, spec.run_dir, lambda c, d, cb: run_iterative(c, d, rounds=rounds, on_round=cb))[-1]
    finished = RunOutcome.load(spec.run_dir)  # finished, but the driver was killed before the ledger append
    return finished if finished is not None else run(config, spec.run_dir)[0]


@dataclass
class NodeRunner:
    """`run_node` bound to the sweep's flags and the driver's working directory (relative paths in flags)."""

    configs: SweepConfigs
    cwd: str

    def __call__(self, spec: RunSpec) -> RunOutcome:
        if os.path.isdir(self.cwd) and os.getcwd() != self.cwd:  # a shared file system; else the worker's own
            os.chdir(self.cwd)
        return run_node(spec, self.configs)


def package_parent() -> str:
    """The folder holding the running `smc_trainer` package, put first on the workers' PYTHONPATH so that
    workers on a shared file system run the driver's code (a missing folder is ignored by Python)."""
    return str(Path(__file__).resolve().parents[3])  # <parent>/smc_trainer/runs/executors/node.py
