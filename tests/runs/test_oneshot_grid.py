"""The one-shot LLM grid in a sweep: `--methods oneshot` is magnitude / Wanda / SparseGPT x unstructured / 2:4 / 4:8
plus Wanda and SparseGPT under OWL, one row per (criterion, distribution, pattern) named in the papers' words; an
N:M row runs once, at its pattern's sparsity, whatever `--sparsities` says."""

from __future__ import annotations

import pytest

import smc_trainer.runs.sweep as sweep
from smc_trainer.runs.sweep import METHOD_GRIDS, SweepArguments, make_plan, run_sweep
from smc_trainer.runs.variants import parse_method_specs, row_label

GRID = (0.5, 0.6, 0.7)
ONESHOT_FLAGS = ["--model_name_or_path", "tiny", "--sparse_method", "omp_before", "--max_steps", "0",
                 "--prune_embeddings", "false", "--num_synthetic_examples", "48", "--report_to", "none", "--use_cpu"]
LABELS = {  # row id -> legend label, by hand
    "dense": "dense",
    "omp_before:distribution=uniform": "OMP (Before), uniform",
    "omp_before:distribution=uniform:sparsity_pattern=2:4": "OMP (Before), uniform, 2:4",
    "omp_before:distribution=uniform:sparsity_pattern=4:8": "OMP (Before), uniform, 4:8",
    "omp_before:criterion=wanda:distribution=uniform": "Wanda (Before), uniform",
    "omp_before:criterion=wanda:distribution=uniform:sparsity_pattern=2:4": "Wanda (Before), uniform, 2:4",
    "omp_before:criterion=wanda:distribution=uniform:sparsity_pattern=4:8": "Wanda (Before), uniform, 4:8",
    "omp_before:criterion=sparsegpt:distribution=uniform": "SparseGPT (Before), uniform",
    "omp_before:criterion=sparsegpt:distribution=uniform:sparsity_pattern=2:4": "SparseGPT (Before), uniform, 2:4",
    "omp_before:criterion=sparsegpt:distribution=uniform:sparsity_pattern=4:8": "SparseGPT (Before), uniform, 4:8",
    "omp_before:criterion=wanda:distribution=owl": "Wanda (Before), OWL",
    "omp_before:criterion=sparsegpt:distribution=owl": "SparseGPT (Before), OWL",
}


def test_the_grid_is_one_row_per_criterion_distribution_and_pattern_in_words():
    specs = parse_method_specs("oneshot", METHOD_GRIDS)
    assert {spec.row: row_label(spec.method, dict(spec.variant)) for spec in specs} == LABELS
    assert [s.row for s in parse_method_specs("dense,oneshot,omp_before", METHOD_GRIDS)] == \
        [*LABELS, "omp_before"]  # the grid's dense once; other names beside it
    with pytest.raises(ValueError, match="sparse_method must be one of"):
        parse_method_specs("oneshot")  # a grid name only where the caller passes its grids


def test_nm_rows_run_once_at_their_patterns_sparsity():
    plan = make_plan(["quickstart"], parse_method_specs("oneshot", METHOD_GRIDS), GRID, [0])
    runs = {(j.label, s) for j in plan.jobs for s in j.sparsities}
    for row in LABELS:
        if row == "dense":
            assert (row, 0.0) in runs
        elif "sparsity_pattern" in row:
            assert [s for r, s in runs if r == row] == [0.5]  # 2:4 and 4:8 are both 50%: one run each
        else:
            assert sorted(s for r, s in runs if r == row) == list(GRID)
    assert plan.fine_tunes == len(runs) == 1 + 5 * 3 + 6 * 1
    assert "omp_before:criterion=wanda:distribution=uniform:sparsity_pattern=4:8   1 x" in plan.describe()
    # 1:4 is 75%, and a grid that lacks a pattern's sparsity still runs the pattern there
    plan = make_plan(["q"], ["omp_before:sparsity_pattern=1:4", "wanda_after:sparsity_pattern=2:4"], [0.3, 0.6], [0])
    assert [j.sparsities for j in plan.jobs if j.kind == "single"] == [(0.75,), (0.5,)]


def _planned(monkeypatch) -> list:
    plans = []
    make = sweep.make_plan
    monkeypatch.setattr(sweep, "make_plan", lambda *a, **k: plans.append(make(*a, **k)) or plans[-1])
    monkeypatch.setattr(sweep, "execute", lambda *a, **k: pytest.fail("a dry run trained"))
    return plans


def test_a_dry_run_of_the_grid_validates_every_row(tmp_path, monkeypatch):
    plans = _planned(monkeypatch)
    args = SweepArguments(recipes="quickstart", methods="oneshot", sparsities="0.5,0.6,0.7", dry_run=True,
                          sweep_dir=str(tmp_path))
    assert run_sweep(args, ONESHOT_FLAGS) == []
    (plan,) = plans
    assert {j.label for j in plan.jobs} == set(LABELS) and plan.fine_tunes == 22
    # a row the flags refuse fails before anything runs: OWL's layer sparsities under a 2:4 pattern
    bad = SweepArguments(methods="omp_before:criterion=wanda:distribution=owl:sparsity_pattern=2:4",
                         sparsities="0.5", dry_run=True, sweep_dir=str(tmp_path))
    with pytest.raises(ValueError, match="distribution owl cannot apply"):
        run_sweep(bad, ONESHOT_FLAGS)


def test_a_sweep_wide_pattern_runs_each_method_once_at_its_sparsity(tmp_path, monkeypatch):
    plans = _planned(monkeypatch)
    args = SweepArguments(recipes="quickstart", methods="dense,omp_before,omp_before:criterion=wanda:distribution="
                          "uniform", sparsities="0.5,0.6", dry_run=True, sweep_dir=str(tmp_path))
    run_sweep(args, [*ONESHOT_FLAGS, "--sparsity_pattern", "4:8"])
    (plan,) = plans
    assert sorted((j.label, j.sparsities) for j in plan.jobs) == [
        ("dense", (0.0,)), ("omp_before:criterion=wanda:distribution=uniform:sparsity_pattern=4:8", (0.5,)),
        ("omp_before:sparsity_pattern=4:8", (0.5,))]
