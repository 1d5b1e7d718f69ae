"""Sweep executors: the same graph of fine-tunes run in this process, in K local workers, on Ray or on Slurm.

One registry maps `--executor` to a backend factory. Ray and submitit are optional extras
(`pip install 'smc-trainer[ray]'`, `'smc-trainer[slurm]'`); asking for one that is not installed is
refused before anything is planned or trained.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

from smc_trainer.errors import UsageError
from smc_trainer.runs.executors.arguments import EXECUTORS, ExecutorArguments
from smc_trainer.runs.executors.driver import Backend
from smc_trainer.runs.executors.node import NodeRunner

__all__ = ["EXECUTORS", "ExecutorArguments", "check_available", "make_backend"]

REQUIRES = {"ray": ("ray", "ray"), "slurm": ("submitit", "slurm")}  # executor -> (module, extra)


def check_available(args: ExecutorArguments) -> None:
    """UsageError naming the extra to install when the executor's library is missing."""
    if args.executor in REQUIRES:
        module, extra = REQUIRES[args.executor]
        if importlib.util.find_spec(module) is None:
            raise UsageError(f"--executor {args.executor} needs the {module} package: pip install "
                             f"'smc-trainer[{extra}]' (or pip install {module})")


def _local(args: ExecutorArguments, runner: NodeRunner, sweep_dir: str) -> Backend:
    from smc_trainer.runs.executors.local import make_local_backend

    return make_local_backend(runner, args.parallel(), args.gpu_list())


def _ray(args: ExecutorArguments, runner: NodeRunner, sweep_dir: str) -> Backend:
    from smc_trainer.runs.executors.ray import RayBackend

    return RayBackend(runner, args.ray_address, args.ray_num_cpus, args.cpus_per_run, args.gpus_per_run)


def _slurm(args: ExecutorArguments, runner: NodeRunner, sweep_dir: str) -> Backend:
    from smc_trainer.runs.executors.slurm import SlurmBackend

    folder = args.slurm_folder or os.path.join(sweep_dir, "slurm")
    return SlurmBackend(runner, os.path.abspath(folder), cluster=args.slurm_cluster, partition=args.slurm_partition,
                        time_min=args.slurm_time_min, cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run,
                        mem_gb=args.slurm_mem_gb, array_parallelism=args.slurm_array_parallelism,
                        setup=args.setup_lines())


FACTORIES: dict[str, Callable[[ExecutorArguments, NodeRunner, str], Backend]] = {
    "local": _local, "ray": _ray, "slurm": _slurm}


def make_backend(args: ExecutorArguments, runner: NodeRunner, sweep_dir: str) -> Backend:
    check_available(args)
    return FACTORIES[args.executor](args, runner, sweep_dir)
