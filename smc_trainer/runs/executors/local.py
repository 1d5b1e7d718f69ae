"""`--executor local`: runs in this process (`--max_parallel 1`, the default) or in K worker processes.

K > 1 uses `concurrent.futures.ProcessPoolExecutor` with fresh (spawned) processes. With `--gpus 0,1`
each worker sees one GPU (`CUDA_VISIBLE_DEVICES`, given out round robin when K exceeds the GPUs); on
CPU each worker gets its share of the cores (torch threads = cores // K), so K runs do not fight
over the same cores. Workers die with the driver (Linux `PR_SET_PDEATHSIG`), so a killed driver
leaves no orphan training into the folders its rerun will use.
"""

from __future__ import annotations

import concurrent.futures as futures
import ctypes
import itertools
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Hashable, Sequence

from smc_trainer.runs.executors.driver import Result
from smc_trainer.runs.run_config import RunOutcome
from smc_trainer.runs.sweep_graph import RunSpec

Runner = Callable[[RunSpec], RunOutcome]
PR_SET_PDEATHSIG = 1


class InProcessBackend:
    """One run at a time in the driver's own process: the plain sequential sweep."""

    name = "local"
    capacity = 1

    def __init__(self, runner: Runner):
        self.runner = runner
        self.queued: dict[int, RunSpec] = {}
        self.counter = itertools.count()

    def submit(self, specs: Sequence[RunSpec]) -> list[Hashable]:
        handles = [next(self.counter) for _ in specs]
        self.queued.update(zip(handles, specs, strict=True))
        return handles

    def wait(self, handles: Sequence[Hashable]) -> list[tuple[Hashable, Result]]:
        handle = handles[0]
        spec = self.queued.pop(handle)
        try:
            return [(handle, self.runner(spec))]
        except Exception as err:  # noqa: BLE001 - the driver records it and stops starting runs
            return [(handle, err)]

    def close(self) -> None:
        self.queued.clear()


class PoolBackend:
    """K spawned worker processes; each takes one GPU of `gpus` (if any) for its whole life."""

    def __init__(self, runner: Runner, max_parallel: int, gpus: Sequence[str] = ()):
        self.name = f"local x{max_parallel}" + (f" on GPUs {','.join(gpus)}" if gpus else "")
        self.capacity = max_parallel
        self.runner = runner
        context = multiprocessing.get_context("spawn")
        devices = context.Queue()
        for i in range(max_parallel):
            devices.put(gpus[i % len(gpus)] if gpus else None)
        threads = max(1, (os.cpu_count() or 1) // max_parallel)
        self.pool = futures.ProcessPoolExecutor(max_workers=max_parallel, mp_context=context,
                                                initializer=init_worker, initargs=(devices, threads, os.getpid()))

    def submit(self, specs: Sequence[RunSpec]) -> list[Hashable]:
        return [self.pool.submit(self.runner, spec) for spec in specs]

    def wait(self, handles: Sequence[Hashable]) -> list[tuple[Hashable, Result]]:
        done, _ = futures.wait(handles, return_when=futures.FIRST_COMPLETED)
        return [(f, f.exception() or f.result()) for f in done]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def init_worker(devices, threads: int, driver_pid: int) -> None:
    """Pool initializer: die with the driver, take a GPU (before CUDA starts), use this worker's share of cores."""
    die_with_parent(driver_pid)
    gpu = devices.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    import torch

    if gpu is None:
        torch.set_num_threads(threads)


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGTERM this process when its parent dies; exit now if the parent is already gone."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        os._exit(1)


def make_local_backend(runner: Runner, max_parallel: int, gpus: Sequence[str]):
    """The in-process backend for one run at a time (no GPU pinning asked), else a pool of `max_parallel`."""
    if max_parallel == 1 and not gpus:
        return InProcessBackend(runner)
    return PoolBackend(runner, max_parallel, gpus)
