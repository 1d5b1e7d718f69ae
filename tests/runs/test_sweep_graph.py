"""The sweep as a graph of fine-tunes and the driver that releases it to a backend: dependencies, the
failure policy, the `--executor` flags. No training here (tests/runs/test_executors.py runs real sweeps)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from run_smc import main
from smc_trainer.errors import UsageError
from smc_trainer.runs.executors import ExecutorArguments, check_available
from smc_trainer.runs.executors.driver import drive
from smc_trainer.runs.executors.slurm import local_job_alive, read_jobs
from smc_trainer.runs.run_config import RunOutcome
from smc_trainer.runs.sweep import build_graph, make_plan
from smc_trainer.runs.sweep_graph import RunSpec, SweepConfigs, SweepGraph

TINY = ["--model_name_or_path", "tiny", "--max_steps", "3", "--report_to", "none", "--use_cpu"]


def outcome(spec: RunSpec) -> RunOutcome:
    return RunOutcome(method=spec.label, target_sparsity=spec.sparsity, mask_sparsity=spec.sparsity,
                      measured_sparsity=spec.sparsity, metrics={"eval_accuracy": 0.5}, output_dir=spec.run_dir,
                      steps=1, wall_time_s=0.0)


def graph_for(methods: list[str], sparsities: list[float], seeds=(0,)) -> SweepGraph:
    plan = make_plan(["quickstart"], methods, sparsities, list(seeds))
    return build_graph(plan, SweepConfigs(TINY), "sweep")


def test_graph_orders_dense_before_after_methods_and_rounds_in_sequence():
    graph = graph_for(["dense", "omp_after", "lth", "gmp"], [0.2, 0.36])
    by_label: dict[str, list[RunSpec]] = {}
    for spec in graph.specs:
        by_label.setdefault(spec.label, []).append(spec)
    (dense,) = by_label["dense"]
    assert dense.after == () and dense.kind == "dense"
    assert [s.after for s in by_label["omp_after"]] == [(dense.key,), (dense.key,)]
    assert all(s.after == () for s in by_label["gmp"]), "during-methods share nothing with the dense run"
    round1, round2 = by_label["lth"]
    assert (round1.round, round2.round) == (1, 2) and round1.after == (dense.key,) and round2.after == (round1.key,)
    assert round1.run_dir == round2.run_dir, "the rounds of one chain share its folder"
    assert len(graph) == 1 + 2 + 2 + 2 and len(set(graph.keys())) == len(graph)
    assert graph.dependents([dense.key]) == {s.key for s in by_label["omp_after"] + by_label["lth"]}
    assert graph.dependents([round1.key]) == {round2.key}


def test_graph_keys_are_the_ledger_keys_of_the_local_sweep():
    from smc_trainer.runs.sweep import run_key

    configs = SweepConfigs(TINY)
    for spec in graph_for(["omp_after", "lrr"], [0.2, 0.36], seeds=(0, 1)).specs:
        assert spec.key == run_key(spec.config(configs))
        assert f"/seed{spec.seed}/" in spec.key


def test_graph_refuses_missing_dependencies_and_duplicates():
    a = RunSpec("a", "dense", "r", 0, "dense", (), "d")
    b = RunSpec("b", "single", "r", 0, "omp_after", (), "d", after=("a",))
    with pytest.raises(ValueError, match="waits for"):
        SweepGraph([b, a])
    with pytest.raises(ValueError, match="appears twice"):
        SweepGraph([a, a])
    with pytest.raises(ValueError, match="kind must be one of"):
        SweepGraph([RunSpec("c", "chain", "r", 0, "lth", (), "d")])


class FakeBackend:
    """Finishes running specs in a random order; checks that nothing starts before its dependencies finished."""

    def __init__(self, capacity: int | None, fail: set[str] = frozenset(), seed: int = 0):
        self.name, self.capacity, self.fail = "fake", capacity, fail
        self.rng = random.Random(seed)
        self.finished: set[str] = set()
        self.submitted: list[str] = []
        self.batches: list[int] = []
        self.running: dict[int, RunSpec] = {}
        self.peak = 0
        self.closed = False

    def submit(self, specs):
        self.batches.append(len(specs))
        handles = []
        for spec in specs:
            assert all(k in self.finished for k in spec.after), f"{spec.key} started before {spec.after}"
            handle = len(self.submitted)
            self.submitted.append(spec.key)
            self.running[handle] = spec
            handles.append(handle)
        self.peak = max(self.peak, len(self.running))
        return handles

    def wait(self, handles):
        handle = self.rng.choice(list(handles))
        spec = self.running.pop(handle)
        if spec.key in self.fail:
            return [(handle, RuntimeError(f"boom in {spec.key}"))]
        self.finished.add(spec.key)
        return [(handle, outcome(spec))]

    def close(self):
        self.closed = True


@pytest.mark.parametrize("capacity", [None, 1, 2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_driver_respects_dependencies_and_capacity_and_records_each_run_once(capacity, seed):
    graph = graph_for(["dense", "omp_after", "random_after", "lth", "gmp"], [0.2, 0.36])
    backend, recorded, lines = FakeBackend(capacity, seed=seed), [], []
    summary = drive(graph, set(), backend, lambda spec, _o: recorded.append(spec.key) or "", lines.append)
    assert sorted(recorded) == sorted(graph.keys()) and len(recorded) == len(set(recorded))
    assert backend.peak <= (capacity or len(graph)) and backend.closed
    if capacity is None:
        assert backend.batches[0] == 3  # dense and both gmp runs share nothing: released together (a job array)
    assert sum("] finished " in line for line in lines) == len(graph)
    assert summary.finished == recorded and lines[-1].startswith("sweep summary (fake): 9 run(s) finished")


def test_driver_skips_recorded_runs_and_starts_their_dependents():
    graph = graph_for(["omp_after", "lth"], [0.2, 0.36])
    dense = graph.specs[0].key
    backend = FakeBackend(None)
    backend.finished.add(dense)  # recorded by an earlier driver
    summary = drive(graph, {dense}, backend, lambda *_: "", lambda _: None)
    assert dense not in backend.submitted and summary.skipped == [dense]
    assert backend.batches[0] == 3  # omp_after x2 and LTH round 1 at once; round 2 after round 1
    assert set(backend.submitted) == set(graph.keys()) - {dense}


def test_after_a_failure_no_new_run_starts_running_ones_are_recorded_and_the_error_is_raised():
    graph = graph_for(["dense", "omp_after", "gmp"], [0.2, 0.36])
    dense = graph.specs[0].key
    gmp = [s.key for s in graph.specs if s.label == "gmp"]
    backend = FakeBackend(None, fail={gmp[0]})
    backend.rng = SimpleNamespace(choice=lambda handles: min(handles, key=lambda h: backend.running[h].key != gmp[0]))
    recorded = []
    with pytest.raises(RuntimeError, match="boom in"):
        drive(graph, set(), backend, lambda spec, _o: recorded.append(spec.key) or "", lambda _: None)
    assert sorted(recorded) == sorted([dense, gmp[1]]), "the runs already started when gmp failed are recorded"
    assert not any(s.label == "omp_after" for s in graph.specs if s.key in backend.submitted), \
        "dense finished after the failure, yet its after-methods must not start"
    assert backend.closed


def test_a_failed_dense_run_never_starts_its_dependents():
    graph = graph_for(["dense", "omp_after"], [0.2])
    backend = FakeBackend(None, fail={graph.specs[0].key})
    with pytest.raises(RuntimeError, match="boom in"):
        drive(graph, set(), backend, lambda *_: "", lambda _: None)
    assert backend.submitted == [graph.specs[0].key]


def test_executor_flags_are_checked_with_the_valid_choices():
    with pytest.raises(UsageError, match="--executor must be one of local, ray, slurm; got 'dask'"):
        ExecutorArguments(executor="dask")
    with pytest.raises(UsageError, match="--ray_address only applies to --executor ray; got --executor local"):
        ExecutorArguments(ray_address="auto")
    with pytest.raises(UsageError, match="--max_parallel, --gpus only apply to --executor local"):
        ExecutorArguments(executor="ray", max_parallel=2, gpus="0")
    with pytest.raises(UsageError, match="--max_parallel must be a positive integer; got 0"):
        ExecutorArguments(max_parallel=0)
    with pytest.raises(UsageError, match="--gpus must be distinct"):
        ExecutorArguments(gpus="0,0")
    with pytest.raises(UsageError, match="--slurm_cluster must be one of slurm, local"):
        ExecutorArguments(executor="slurm", slurm_cluster="debug")
    assert ExecutorArguments().parallel() == 1
    assert ExecutorArguments(gpus="0, 1").parallel() == 2 and ExecutorArguments(gpus="0,1").gpu_list() == ["0", "1"]
    assert ExecutorArguments(max_parallel=3, gpus="1").parallel() == 3
    assert ExecutorArguments(executor="slurm", slurm_setup="module load cuda; source v/bin/activate").setup_lines() \
        == ["module load cuda", "source v/bin/activate"]


def test_a_missing_optional_library_is_named_with_its_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("ray", "submitit")
                        else real(name, *a))
    with pytest.raises(UsageError, match=r"--executor ray needs the ray package: pip install 'smc-trainer\[ray\]'"):
        check_available(ExecutorArguments(executor="ray"))
    with pytest.raises(UsageError, match=r"smc-trainer\[slurm\]"):
        check_available(ExecutorArguments(executor="slurm"))
    check_available(ExecutorArguments())


def test_cli_refuses_a_bad_executor_before_planning(tmp_path, monkeypatch):
    import smc_trainer.runs.sweep as sweep

    monkeypatch.setattr(sweep, "make_plan", lambda *a, **k: pytest.fail("planned"))
    with pytest.raises(UsageError, match="--executor must be one of"):
        main(["sweep", "--executor", "mpi", "--sweep_dir", str(tmp_path), *TINY])


def test_slurm_job_list_and_liveness(tmp_path):
    path = tmp_path / "sweep_jobs.jsonl"
    path.write_text('{"key": "a", "job_id": "11"}\n{"key": "b", "job_id": "12_0"}\n{"key": "a", "job_id": "13"}\n{"ke')
    assert read_jobs(str(path)) == {"a": "13", "b": "12_0"}  # the last job of a key; a torn last line is ignored
    assert read_jobs(str(tmp_path / "none.jsonl")) == {}
    import os

    assert not local_job_alive(str(os.getpid())), "a process that is not a submitit job is never taken for one"
    assert not local_job_alive("999999999") and not local_job_alive("12_0")


def test_run_spec_rebuilds_the_configuration_from_flags():
    spec = graph_for(["omp_after"], [0.36]).specs[-1]
    config = spec.config(SweepConfigs(TINY))
    assert config.training_args.sparse_method == "omp_after" and config.training_args.sparsity == 0.36
    assert SimpleNamespace(**dict(spec.overrides)).sparse_method == "omp_after"
    import pickle

    configs = SweepConfigs(TINY)
    configs("quickstart", 0)
    clone = pickle.loads(pickle.dumps(configs))
    assert clone.run_argv == TINY and clone._parsed == {}  # parsed arguments are rebuilt in the worker
