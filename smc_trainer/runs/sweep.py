"""Sweeps: recipes x methods x sparsities x seeds, planned as the fewest fine-tunes, resumable.

The plan shares work: one dense fine-tune per (recipe, seed) serves the dense row, every
after-method and both iterative chains; one LTH (or LRR) chain of R rounds yields all of its
sparsities; every other (method, sparsity) is one fine-tune. Each finished run appends one
ledger record; rerunning the same command skips every key already in the ledger, so a killed
sweep loses at most the run in progress (which resumes from its checkpoints, if it saved any).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers.utils import logging

from smc_trainer.engine.collapse import find_collapsed
from smc_trainer.engine.module_groups import TABLE1_GROUPS, TABLE1_PRESET, parse_module_group
from smc_trainer.engine.patterns import parse_pattern
from smc_trainer.errors import UsageError
from smc_trainer.methods import get_method_class
from smc_trainer.methods.iterative import imp_round_for, imp_rounds, imp_sparsity, round_changes
from smc_trainer.runs.config import load_plugins_of
from smc_trainer.runs.dense_cache import config_fingerprint, fingerprint_hash
from smc_trainer.runs.executors import ExecutorArguments, check_available, make_backend
from smc_trainer.runs.executors.driver import drive
from smc_trainer.runs.executors.node import NodeRunner
from smc_trainer.runs.ledger import Ledger
from smc_trainer.runs.presets import base_method, method_changes
from smc_trainer.runs.run_config import RunConfig, RunOutcome
from smc_trainer.runs.sweep_graph import RunSpec, SweepConfigs, SweepGraph
from smc_trainer.runs.variants import (
    MethodSpec,
    args_variant,
    dense_variant,
    parse_method_spec,
    parse_method_specs,
    row_id,
    run_method,
    variant_flags,
)
from smc_trainer.tasks.loading import check_model_sources
from smc_trainer.version import __version__

logger = logging.get_logger(__name__)

PAPER_GRID = tuple(1.0 - 0.8**k for k in range(1, 11))
QUICKSTART_METHODS = "dense,omp_after,lth,gmp,snip,random_before"
ONESHOT_CRITERIA = ("", ":criterion=wanda", ":criterion=sparsegpt")  # omp_before's own criterion is magnitude
ONESHOT_PATTERNS = ("", ":sparsity_pattern=2:4", ":sparsity_pattern=4:8")
METHOD_GRIDS: dict[str, str] = {
    # one-shot pruning of decoder LLMs (Wanda, SparseGPT and OWL papers; LLM-KICK): magnitude (omp_before's own
    # criterion: its rows read "OMP (Before)"), Wanda and SparseGPT at the papers' uniform layer sparsity, each
    # unstructured, 2:4 and 4:8, and OWL's outlier-weighted layer sparsities on Wanda and SparseGPT (unstructured
    # only: an N:M pattern fixes every layer's sparsity); run with --max_steps 0 (docs/running.md)
    "oneshot": ",".join(["dense", *(f"omp_before{c}:distribution=uniform{p}"
                                    for c in ONESHOT_CRITERIA for p in ONESHOT_PATTERNS),
                         "omp_before:criterion=wanda:distribution=owl",
                         "omp_before:criterion=sparsegpt:distribution=owl"]),
}
"""Named method lists a sweep's `--methods` accepts in place of (or beside) method names."""


@dataclass
class SweepArguments:
    """What to sweep. Every other flag (training, sparse, data) applies to all runs of the sweep."""

    recipes: str = field(default="quickstart", metadata={"help": "Comma-separated recipe names or YAML paths."})
    methods: str = field(
        default=QUICKSTART_METHODS,
        metadata={"help": "Comma-separated sparse methods, each optionally a variant with its own flag values, "
                  "METHOD:KEY=VALUE[:KEY=VALUE], e.g. rigl,rigl:init_method=snip,rigl:init_method=random_before "
                  "(the paper's OMP/SNIP/Random + RigL rows). Keys: the variant axes (smc_trainer.runs.variants), "
                  "e.g. init_method, prune_modules, distribution. 'oneshot' stands for the one-shot LLM grid "
                  "(METHOD_GRIDS): dense; omp_before (magnitude), omp_before:criterion=wanda and "
                  "omp_before:criterion=sparsegpt at distribution=uniform, each unstructured, :sparsity_pattern=2:4 "
                  "and 4:8; wanda and sparsegpt with :distribution=owl (with --max_steps 0; an N:M row runs at its "
                  "1 - N/M only)."},
    )
    sparsities: str = field(
        default="0.2,0.36,0.488",
        metadata={"help": "Comma-separated sparsities, or 'paper' for 1 - 0.8^k, k = 1..10."},
    )
    seeds: str = field(default="0", metadata={"help": "Comma-separated seeds."})
    module_groups: str | None = field(
        default=None,
        metadata={"help": "Comma-separated module groups, one more sweep dimension: each sparse run prunes "
                  "only those linears (its --prune_modules). 'table1' is the paper's Table 1 preset, "
                  "qkvo_ffn,qkv,qk,qv,kv."},
    )
    sweep_dir: str = field(default="smc_outputs/sweep", metadata={"help": "Where runs, the ledger and report go."})
    sweep_ledger: str | None = field(default=None, metadata={"help": "Ledger path (default: SWEEP_DIR/ledger.jsonl)."})
    dry_run: bool = field(default=False, metadata={"help": "Print the plan and stop."})

    def ledger_path(self) -> str:
        return self.sweep_ledger or os.path.join(self.sweep_dir, "ledger.jsonl")


@dataclass(frozen=True)
class Job:
    """One unit of work: a dense fine-tune, an iterative chain, or a single fine-tune."""

    kind: str  # "dense" | "chain" | "single"
    recipe: str
    seed: int
    method: str
    sparsities: tuple[float, ...]
    module_group: str | None = None  # --prune_modules of the job's runs (None: the recipe's / flags')
    variant: tuple[tuple[str, Any], ...] = ()  # other variant axes' flag values (smc_trainer.runs.variants)

    @property
    def fine_tunes(self) -> int:
        return len(self.sparsities) if self.kind == "chain" else 1

    @property
    def label(self) -> str:
        """The method, with the module group when there is one and the variant: `omp_after[qk]`,
        `rigl:init_method=snip`."""
        method = self.method if self.module_group is None else f"{self.method}[{self.module_group}]"
        return row_id(method, dict(self.variant))

    def training_changes(self) -> dict[str, Any]:
        """The training flags this job sets besides the method and sparsity."""
        return {**({} if self.module_group is None else {"prune_modules": self.module_group}),
                **variant_flags(self.variant)}


@dataclass
class Plan:
    jobs: list[Job]

    @property
    def fine_tunes(self) -> int:
        return sum(j.fine_tunes for j in self.jobs)

    def describe(self) -> str:
        """One line per (recipe, seed, method): what is trained and how many fine-tunes it costs."""
        groups: dict[tuple[str, int, str], list[Job]] = {}
        for j in self.jobs:
            groups.setdefault((j.recipe, j.seed, j.label), []).append(j)
        lines = [f"Sweep plan: {self.fine_tunes} fine-tunes"]
        for (recipe, seed, method), jobs in groups.items():
            kind = jobs[0].kind
            sparsities = [s for j in jobs for s in j.sparsities]
            what = {"dense": "dense fine-tune, cached and shared", "chain": f"one {len(sparsities)}-round chain",
                    "single": f"{len(jobs)} fine-tune(s)"}[kind]
            grid = ", ".join(f"{x:.4g}" for x in sparsities)
            count = sum(j.fine_tunes for j in jobs)
            lines.append(f"  {recipe:<12} seed {seed:<3} {method:<14} {count:>3} x  {what:<34} [{grid}]")
        return "\n".join(lines)


def parse_list(text: str, flag: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise UsageError(f"--{flag} is empty")
    return items


def parse_sparsities(text: str) -> list[float]:
    if text.strip() == "paper":
        return list(PAPER_GRID)
    values = []
    for item in parse_list(text, "sparsities"):
        try:
            value = float(item)
        except ValueError:
            raise UsageError(f"--sparsities must be numbers in [0, 1) or 'paper'; got {item!r}") from None
        if not 0.0 < value < 1.0:
            raise UsageError(f"--sparsities must be in (0, 1); got {value}")
        values.append(value)
    return values


def snap_to_grid(sparsity: float, rate: float) -> float:
    """Use the exact 1 - (1 - rate)^k when a sparsity is the paper's rounded grid value (0.59 -> 0.5904)."""
    try:
        return imp_sparsity(imp_round_for(sparsity, rate), rate)
    except ValueError:
        return sparsity


def make_plan(
    recipes: Sequence[str], methods: Sequence[str | MethodSpec], sparsities: Sequence[float], seeds: Sequence[int],
    imp_rate: float = 0.2, module_groups: Sequence[str | None] = (None,),
) -> Plan:
    """The cheapest set of fine-tunes covering the grid. Unknown methods or variants raise before anything runs.

    `methods` are names or variants (`rigl:init_method=snip`, see `smc_trainer.runs.variants`). Every sparse
    method runs once per module group (a variant that names its own `prune_modules` runs with that group only);
    the dense fine-tune (which prunes nothing) is shared.
    """
    specs = [m if isinstance(m, MethodSpec) else parse_method_spec(m) for m in methods]
    phases = {spec: get_method_class(base_method(spec.method)).phase for spec in specs}
    grid = sorted({snap_to_grid(s, imp_rate) for s in sparsities})
    jobs: list[Job] = []
    for recipe in recipes:
        for seed in seeds:
            # one dense fine-tune per model (a variant's `dense_variant`: GTS and Graph2Tree each have their own)
            models = {dense_variant(spec.variant) for spec, p in phases.items() if p in ("dense", "after", "iterative")}
            for model in sorted(models, key=lambda m: (len(m), str(m))):  # the default model's first
                jobs.append(Job("dense", recipe, seed, "dense", (0.0,), variant=model))
            for spec, phase in phases.items():
                if phase == "dense":
                    continue
                variant = tuple((k, v) for k, v in spec.variant if k != "prune_modules")
                own_group = dict(spec.variant).get("prune_modules")
                for group in module_groups if own_group is None else (own_group,):
                    if phase == "iterative":
                        jobs.append(Job("chain", recipe, seed, spec.method, chain_sparsities(spec, grid, imp_rate),
                                        group, variant))
                    else:
                        jobs.extend(Job("single", recipe, seed, spec.method, (s,), group, variant)
                                    for s in single_sparsities(spec, grid))
    return Plan(jobs)


def single_sparsities(spec: MethodSpec, grid: Sequence[float]) -> list[float]:
    """The sparsities a one-run-per-sparsity method runs at: the grid, or under an N:M `sparsity_pattern` (which
    fixes the sparsity at 1 - N/M) that sparsity alone, whatever the grid: `--sparsities 0.5,0.6,0.7` with
    `omp_before:sparsity_pattern=2:4` is one run at 0.5, not three runs the flags would refuse."""
    pattern = parse_pattern(dict(spec.variant).get("sparsity_pattern"))
    return list(grid) if pattern is None else [pattern.sparsity]


def chain_sparsities(spec: MethodSpec, grid: Sequence[float], imp_rate: float) -> tuple[float, ...]:
    """The rounds of an LTH/LRR chain: up to the grid's largest sparsity, or, when the variant sets an N:M
    `sparsity_pattern` (which fixes the sparsity at 1 - N/M), the rounds below the pattern and its last round."""
    pattern = parse_pattern(dict(spec.variant).get("sparsity_pattern"))
    if pattern is not None:
        return tuple(imp_rounds(imp_rate, pattern))
    rounds = max(imp_round_for(s, imp_rate) for s in grid)
    return tuple(imp_sparsity(k, imp_rate) for k in range(1, rounds + 1))


# ---------------------------------------------------------------------------------------------
# Execution
# ---------------------------------------------------------------------------------------------


def run_key(config: RunConfig) -> str:
    """`recipe/row/sparsity/seed/hash`; the row tells variants apart (`omp_after[qk]`, `rigl:init_method=snip`)
    and is the bare method for a run with every variant axis at its default, as in older ledgers."""
    a = config.training_args
    digest = fingerprint_hash(config_fingerprint(config, include_sparse=True))
    variant = args_variant(a)
    method = run_method(a)
    if variant.get("prune_modules"):  # module groups (Table 1): the key's older `method[group]` form
        method = f"{method}[{variant.pop('prune_modules')}]"
    return f"{config.recipe.name}/{row_id(method, variant)}/{a.sparsity:.6f}/seed{a.seed}/{digest}"


def _git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def make_record(config: RunConfig, outcome: RunOutcome, key: str) -> dict[str, Any]:
    """The ledger record of one finished run."""
    a = config.training_args
    method, variant = run_method(a), args_variant(a)
    return {
        "key": key,
        "recipe": config.recipe.name,
        "task": config.recipe.task,
        "dataset": config.data_args.dataset_name,
        "model": outcome.model or config.model_args.model_name_or_path,
        "method": method,
        "phase": get_method_class(a.sparse_method).phase,
        "module_group": a.prune_modules if a.sparse_method != "dense" else None,
        "variant": variant,  # the report's row: the method and its non-default variant axes
        "row": row_id(method, variant),
        "target_sparsity": a.sparsity,
        "mask_sparsity": outcome.mask_sparsity,
        "measured_sparsity": outcome.measured_sparsity,
        "seed": a.seed,
        "round": outcome.round,
        "metrics": outcome.metrics,
        "metric": config.recipe.metric,
        "chance_level": config.recipe.chance_level,
        "subsets": list(config.recipe.subsets),  # reported separately: metrics <split>_<subset>_<metric>
        "select_on": a.select_on,
        "layers": outcome.layers,
        "collapsed_layers": [c.as_dict() for c in find_collapsed(outcome.layers)],  # smc_trainer.engine.collapse
        "wall_time_s": outcome.wall_time_s,
        "steps": outcome.steps,
        "version": __version__,
        "git_commit": _git_commit(),
        "config": config_fingerprint(config, include_sparse=True),
        "config_hash": key.rsplit("/", 1)[-1],
        "output_dir": outcome.output_dir,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def job_overrides(base: RunConfig, job: Job, sparsity: float) -> tuple[tuple[str, Any], ...]:
    """The training arguments one fine-tune of `job` changes: its method (a preset's flags, except those the user
    gave), the sparsity (with a chain round's `imp_round` below an N:M pattern), and the job's module group and
    variant values."""
    changes = job.training_changes()
    sparse = {"sparsity": sparsity}
    if job.kind == "chain":
        pattern = parse_pattern(changes.get("sparsity_pattern", base.training_args.sparsity_pattern))
        sparse = round_changes(sparsity, base.training_args.imp_rate, pattern)
    return (*method_changes(base, job.method).items(), *sparse.items(), *changes.items())


def build_graph(plan: Plan, config_for: Callable[[str, int], RunConfig], sweep_dir: str) -> SweepGraph:
    """The plan as a graph of single fine-tunes (one per ledger key) with their dependencies: the dense
    fine-tune of a (recipe, seed) before its after-methods and iterative chains, LTH/LRR round k after k - 1."""
    specs: dict[str, RunSpec] = {}
    dense: dict[tuple[str, int, tuple], str] = {}
    for job in plan.jobs:
        base = config_for(job.recipe, job.seed)
        overrides = [job_overrides(base, job, s) for s in job.sparsities]
        configs = [base.with_training(**dict(o)) for o in overrides]
        run_dir = _run_dir(sweep_dir, configs[0], job)
        phase = get_method_class(base_method(job.method)).phase
        after = (dense[(job.recipe, job.seed, dense_variant(job.variant))],) if phase in ("after", "iterative") else ()
        for k, (config, override) in enumerate(zip(configs, overrides, strict=True), start=1):
            key = run_key(config)
            kind, round_index = ("round", k) if job.kind == "chain" else (job.kind, None)
            specs.setdefault(key, RunSpec(key, kind, job.recipe, job.seed, job.label, override, run_dir,
                                          round_index, after))
            if job.kind == "dense":
                dense[(job.recipe, job.seed, dense_variant(job.variant))] = key
            if job.kind == "chain":
                after = (key,)
    return SweepGraph(list(specs.values()))


def execute(
    plan: Plan,
    config_for: Callable[[str, int], RunConfig],
    sweep_dir: str,
    ledger: Ledger,
    progress: Callable[[str], None] = logger.info,
    executor: ExecutorArguments | None = None,
) -> list[dict[str, Any]]:
    """Run every fine-tune of `plan` not yet in `ledger` on `executor` (default: one at a time in this process);
    returns the records appended by this call. This process alone appends to the ledger, whatever the executor;
    other processes need a picklable `config_for` (`SweepConfigs`)."""
    graph = build_graph(plan, config_for, sweep_dir)
    appended: list[dict[str, Any]] = []

    def record(spec: RunSpec, outcome: RunOutcome) -> str:
        config = spec.config(config_for)
        rec = make_record(config, outcome, spec.key)
        ledger.append(rec)
        appended.append(rec)
        metric = config.recipe.metric
        return ", ".join(f"{k} {v:.4f}" for k, v in outcome.metrics.items() if k.endswith(metric))

    backend = make_backend(executor or ExecutorArguments(), NodeRunner(config_for, os.getcwd()), sweep_dir)
    drive(graph, ledger.done_keys(), backend, record, progress)
    return appended


def _run_dir(sweep_dir: str, config: RunConfig, job: Job) -> str:
    recipe = config.recipe.name  # not job.recipe, which may be a path to a recipe YAML
    label = job.label.replace(os.sep, "_")  # a variant's value may be a path (a distillation teacher)
    if job.kind == "chain":
        # one folder per chain, named by the fingerprint of the chain's configuration at sparsity 0 (at its
        # pattern's sparsity under an N:M pattern), written into the fingerprint: no such run exists to build
        # (a sparse method refuses sparsity 0, a pattern any other sparsity outside the chain's rounds)
        pattern = parse_pattern(config.training_args.sparsity_pattern)
        fingerprint = config_fingerprint(config, include_sparse=True)
        fingerprint["training"]["sparsity"] = 0.0 if pattern is None else pattern.sparsity
        fingerprint["training"].pop("imp_round", None)  # omitted at its default (None), as at the chain's start
        digest = fingerprint_hash(fingerprint)
        return os.path.join(sweep_dir, "runs", recipe, label, f"chain-seed{job.seed}-{digest[:8]}")
    digest = run_key(config).rsplit("/", 1)[-1]
    return os.path.join(sweep_dir, "runs", recipe, label, f"s{job.sparsities[0]:.4f}-seed{job.seed}-{digest[:8]}")


def seeds_from(text: str) -> list[int]:
    try:
        return [int(s) for s in parse_list(text, "seeds")]
    except ValueError as err:
        raise UsageError(f"--seeds must be comma-separated integers; got {text!r}") from err


def unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def module_groups_from(text: str | None) -> list[str | None]:
    """The --module_groups list, each validated ("qkvo_ffn,qkv" -> ["qkvo_ffn", "qkv"]); [None] when unset.

    The name `table1` stands for the paper's Table 1 groups (`TABLE1_GROUPS`), in the paper's row order.
    """
    if text is None:
        return [None]
    names = parse_list(text, "module_groups")
    groups = unique(g for name in names for g in (TABLE1_GROUPS if name.strip().lower() == TABLE1_PRESET else (name,)))
    for group in groups:
        parse_module_group(group, flag="module_groups")
    return groups


def check_variants(plan: Plan, bases: dict[str, RunConfig], module_groups: Sequence[str | None]) -> None:
    """Build one configuration per (recipe, row) so a flag combination the run would refuse (a variant clashing
    with the other flags) fails now, before anything trains; a variant naming its own module group while
    --module_groups is given is refused too."""
    for job in plan.jobs:
        if job.kind != "dense" and module_groups != [None] and job.module_group not in module_groups:
            raise UsageError(f"--methods {job.label}: a variant sets prune_modules={job.module_group} and "
                             f"--module_groups is given too; use one of the two")
    seen = set()
    for job in plan.jobs:
        if (job.recipe, job.label) not in seen:
            seen.add((job.recipe, job.label))
            base = bases[job.recipe]
            base.with_training(**dict(job_overrides(base, job, job.sparsities[-1])))


def sweep_wide_pattern(methods: list[MethodSpec], run_argv: list[str]) -> tuple[list[MethodSpec], list[str]]:
    """A sweep's `--sparsity_pattern N:M` becomes every sparse method's variant (a method's own
    `:sparsity_pattern=` wins): the shared dense fine-tune stays dense, rows name the pattern, and LTH/LRR plan
    the pattern's chain. Returns the methods and the run flags without it."""
    rest, pattern, tokens = [], None, iter(run_argv)
    for token in tokens:
        if token == "--sparsity_pattern":
            pattern = next(tokens, "")
        elif token.startswith("--sparsity_pattern="):
            pattern = token.partition("=")[2]
        else:
            rest.append(token)
    if pattern is None:
        return methods, run_argv
    parse_pattern(pattern)  # a bad value fails here, naming the flag
    specs = []
    for spec in methods:
        if base_method(spec.method) == "dense" or "sparsity_pattern" in dict(spec.variant):
            specs.append(spec)
        else:
            specs.append(parse_method_spec(f"{row_id(spec.method, dict(spec.variant))}:sparsity_pattern={pattern}"))
    return specs, rest


def run_sweep(sweep_args: SweepArguments, run_argv: list[str], executor: ExecutorArguments | None = None
              ) -> list[dict[str, Any]]:
    """Validate everything, print the plan, run what the ledger lacks (on `executor`), and write the report."""
    executor = executor or ExecutorArguments()
    check_available(executor)
    if any(a == "--recipe" or a.startswith("--recipe=") for a in run_argv):
        raise UsageError("a sweep takes --recipes (comma-separated), not --recipe")
    load_plugins_of(run_argv)  # a plugin's methods and knobs are valid in --methods
    recipes = unique(parse_list(sweep_args.recipes, "recipes"))
    methods = parse_method_specs(sweep_args.methods, METHOD_GRIDS)
    methods, run_argv = sweep_wide_pattern(methods, run_argv)
    sparsities = parse_sparsities(sweep_args.sparsities)
    seeds = seeds_from(sweep_args.seeds)
    groups = module_groups_from(sweep_args.module_groups)
    if not any(a.startswith("--dense_cache_dir") for a in run_argv):
        run_argv = [*run_argv, "--dense_cache_dir", os.path.join(sweep_args.sweep_dir, "dense_cache")]
    configs = SweepConfigs(run_argv)  # picklable: workers of every executor rebuild the same configurations
    bases = {r: configs(r, seeds[0]) for r in recipes}  # bad flags/recipes fail here
    for base in bases.values():  # a missing model folder or corrupt weights too, before any run starts
        check_model_sources(base.model_args)
    plan = make_plan(recipes, methods, sparsities, seeds, imp_rate=next(iter(bases.values())).training_args.imp_rate,
                     module_groups=groups)
    check_variants(plan, bases, groups)
    logger.info(plan.describe())
    ledger = Ledger(sweep_args.ledger_path())
    done = ledger.done_keys()  # a foreign or outdated ledger is refused before any training
    logger.info(f"ledger {ledger.path}: {len(done)} finished run(s) on record")
    if sweep_args.dry_run:
        return []

    return execute(plan, configs, sweep_args.sweep_dir, ledger, progress=logger.info, executor=executor)
