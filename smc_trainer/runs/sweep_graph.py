"""A sweep as a graph of single fine-tunes: what each executor (local, Ray, Slurm) is handed.

The planner (`smc_trainer.runs.sweep.make_plan`) groups work into jobs; `sweep.build_graph` turns
them into `RunSpec`s, one per ledger key, each naming the keys that must finish first: the dense
fine-tune before its after-methods and iterative chains, LTH/LRR round k after round k - 1. A
cross-validated recipe's folds stay inside one spec (its outcome is the folds' pooled record).
Specs are plain picklable data; a worker rebuilds the run's configuration from the sweep's flags
(`SweepConfigs`), so nothing process-bound (devices, accelerate state) crosses a process boundary.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from smc_trainer.runs.config import parse_run_config
from smc_trainer.runs.run_config import RunConfig

KINDS = ("dense", "single", "round")


@dataclass(frozen=True)
class RunSpec:
    """One fine-tune of the sweep: its ledger key, where it writes, and the keys it waits for."""

    key: str
    kind: str  # "dense" | "single" | "round" (one round of an LTH/LRR chain; run_dir is the chain's folder)
    recipe: str
    seed: int
    label: str  # the method, with its module group: omp_after[qk]
    overrides: tuple[tuple[str, Any], ...]  # training arguments that differ from the sweep's base configuration
    run_dir: str
    round: int | None = None
    after: tuple[str, ...] = ()

    def config(self, configs: SweepConfigs) -> RunConfig:
        return configs(self.recipe, self.seed).with_training(**dict(self.overrides))

    @property
    def sparsity(self) -> float:
        return float(dict(self.overrides).get("sparsity", 0.0))

    def describe(self) -> str:
        where = f"round {self.round}" if self.round is not None else f"sparsity {self.sparsity:.4g}"
        return f"{self.label} {where} on {self.recipe} (seed {self.seed})"


@dataclass
class SweepGraph:
    """Specs in a dependency-respecting order (every spec after the specs it waits for)."""

    specs: list[RunSpec]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for spec in self.specs:
            if spec.kind not in KINDS:
                raise ValueError(f"run spec {spec.key}: kind must be one of {', '.join(KINDS)}; got {spec.kind!r}")
            if spec.key in seen:
                raise ValueError(f"run spec {spec.key} appears twice in the sweep graph")
            missing = [k for k in spec.after if k not in seen]
            if missing:
                raise ValueError(f"run spec {spec.key} waits for {missing}, which no earlier spec provides")
            seen.add(spec.key)

    def __len__(self) -> int:
        return len(self.specs)

    def keys(self) -> list[str]:
        return [s.key for s in self.specs]

    def ready(self, pending: Iterable[RunSpec], finished: set[str]) -> list[RunSpec]:
        """The pending specs whose dependencies have all finished, in graph order."""
        return [s for s in pending if all(k in finished for k in s.after)]

    def dependents(self, keys: Sequence[str]) -> set[str]:
        """Every key that waits, directly or not, on one of `keys`."""
        blocked = set(keys)
        for spec in self.specs:  # graph order: a dependency is met before its dependents
            if any(k in blocked for k in spec.after):
                blocked.add(spec.key)
        return blocked - set(keys)


@dataclass
class SweepConfigs:
    """The sweep's base configuration per (recipe, seed), rebuilt from the same flags in every process."""

    run_argv: list[str]
    _parsed: dict[str, RunConfig] = field(default_factory=dict, repr=False, compare=False)

    def __call__(self, recipe: str, seed: int) -> RunConfig:
        if recipe not in self._parsed:
            self._parsed[recipe] = parse_run_config([*self.run_argv, "--recipe", recipe])
        return self._parsed[recipe].with_training(seed=seed)

    def __getstate__(self) -> dict[str, Any]:
        return {"run_argv": self.run_argv, "_parsed": {}}  # parsed arguments hold process state: re-parse there
