"""LTH/LRR onto an N:M pattern: the round plan, the flags, whole chains through the pipeline and sweeps.

Rounds below the pattern's sparsity keep at least N of every M (with the grid's exact counts), the last round
exactly N of every M within the mask before it (smc_trainer.methods.iterative, smc_trainer.engine.patterns)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from safetensors.torch import load_file
from sparse_helpers import tiny_config

from smc_trainer import SparseTrainingArguments
from smc_trainer.engine.masks import MASKS_NAME, REPORT_NAME
from smc_trainer.engine.patterns import NMPattern, nm_violations
from smc_trainer.engine.selection import keep_count
from smc_trainer.methods.iterative import imp_round_for, imp_rounds, imp_sparsity, round_changes
from smc_trainer.runs import pipeline

TWO_FOUR = NMPattern(2, 4)


@pytest.mark.parametrize("pattern,rate,plan", [
    (TWO_FOUR, 0.2, [0.2, 0.36, 0.488, 0.5]),  # 0.488 stays a round: the last prunes 2.3% of what is left
    (NMPattern(1, 4), 0.2, [0.2, 0.36, 0.488, 0.5904, 0.67232, 0.737856, 0.75]),
    (TWO_FOUR, 0.5, [0.5]),  # the grid lands on the pattern: one round, the pattern round
    (TWO_FOUR, 0.4, [0.4, 0.5]),
    (NMPattern(4, 8), 0.25, [0.25, 0.4375, 0.5]),
])
def test_round_plan_is_the_grid_below_the_pattern_then_the_pattern(pattern, rate, plan):
    assert imp_rounds(rate, pattern) == pytest.approx(plan, abs=1e-12)
    for k, sparsity in enumerate(plan, start=1):
        assert imp_round_for(sparsity, rate, pattern) == k
        assert imp_sparsity(k, rate, pattern) == pytest.approx(sparsity, abs=1e-12)
        below = {"imp_round": k} if k < len(plan) else {}
        assert round_changes(imp_sparsity(k, rate, pattern), rate, pattern) == {"sparsity": plan[k - 1], **below}
    assert round_changes(0.36, rate, None) == {"sparsity": 0.36}
    with pytest.raises(ValueError, match="not a round of iterative pruning onto --sparsity_pattern"):
        imp_round_for(0.5904, rate, pattern) if pattern.sparsity < 0.59 else imp_round_for(0.55, rate, pattern)
    with pytest.raises(ValueError, match="--imp_round must be in 1.."):
        imp_sparsity(len(plan) + 1, rate, pattern)


def _args(tmp_path, **kw) -> SparseTrainingArguments:
    return SparseTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **kw)


@pytest.mark.parametrize("method", ["lth", "lrr"])
def test_flags_take_the_pattern_sparsity_and_rounds_below_it_only_from_the_pipeline(tmp_path, method):
    assert _args(tmp_path, sparse_method=method, sparsity=0.5, sparsity_pattern="2:4").imp_round is None
    _args(tmp_path, sparse_method=method, sparsity=0.36, sparsity_pattern="2:4", imp_round=2)  # a round below
    with pytest.raises(ValueError, match=r"sparsity 0\.5; got --sparsity 0\.36"):
        _args(tmp_path, sparse_method=method, sparsity=0.36, sparsity_pattern="2:4")
    with pytest.raises(ValueError, match="--imp_round 3 marks round 3.*is round 2"):
        _args(tmp_path, sparse_method=method, sparsity=0.36, sparsity_pattern="2:4", imp_round=3)
    with pytest.raises(ValueError, match="not a round of iterative pruning onto"):
        _args(tmp_path, sparse_method=method, sparsity=0.4, sparsity_pattern="2:4", imp_round=2)
    with pytest.raises(ValueError, match="--imp_round 2 marks a round.*leave it unset"):
        _args(tmp_path, sparse_method=method, sparsity=0.36, imp_round=2)
    with pytest.raises(ValueError, match="global or uniform"):
        _args(tmp_path, sparse_method=method, sparsity=0.5, sparsity_pattern="2:4", distribution="erk")


def test_imp_round_is_refused_for_other_methods(tmp_path):
    with pytest.raises(ValueError, match="--sparse_method omp_after with --sparsity_pattern 2:4 has no such rounds"):
        _args(tmp_path, sparse_method="omp_after", sparsity=0.5, sparsity_pattern="2:4", imp_round=1)


def check_chain(outcomes, pattern: NMPattern, plan: list[float]) -> None:
    """Every round's saved masks: the grid's exact count, at least N of every M before the last round, exactly N
    at it, nested; the saved weights are zero wherever the mask prunes."""
    assert [o.round for o in outcomes] == list(range(1, len(plan) + 1))
    previous = None
    for k, (outcome, sparsity) in enumerate(zip(outcomes, plan, strict=True), start=1):
        assert outcome.target_sparsity == pytest.approx(sparsity, abs=1e-12)
        masks = load_file(os.path.join(outcome.output_dir, MASKS_NAME))
        weights = load_file(os.path.join(outcome.output_dir, "model.safetensors"))
        total = sum(m.numel() for m in masks.values())
        assert sum(int(m.sum()) for m in masks.values()) == keep_count(1 - sparsity, total), f"round {k}"
        for name, mask in masks.items():  # tiny BERT: every prunable weight groups along dim 1
            per_group = mask.reshape(-1, pattern.m).sum(dim=1)
            if k < len(plan):
                assert bool((per_group >= pattern.n).all()), f"round {k}: {name} has a group below {pattern.n}"
            else:
                assert nm_violations(mask, pattern) == 0, name
            assert not bool(weights[name][~mask].any()), f"round {k}: {name} has non-zero pruned weights"
            assert previous is None or not bool((mask & ~previous[name]).any()), f"round {k} regrew {name}"
        previous = masks
    assert any(int(m.reshape(-1, pattern.m).sum(1).max()) > pattern.n for m in load_file(
        os.path.join(outcomes[0].output_dir, MASKS_NAME)).values()), "the first round should be unstructured"


@pytest.mark.parametrize("method,extra,rate", [
    ("lth", (), 0.2),
    ("lrr", ("--distribution", "uniform"), 0.4),
    ("lrr", ("--criterion", "snip"), 0.3),  # the trainer prunes within the previous round's mask
])
def test_chains_end_in_exact_two_four_masks(tmp_path, method, extra, rate):
    config = tiny_config(tmp_path, method, 0.5, "--sparsity_pattern", "2:4", "--imp_rate", str(rate), *extra)
    outcomes = pipeline.run_iterative(config, str(tmp_path / "chain"))
    check_chain(outcomes, TWO_FOUR, imp_rounds(rate, TWO_FOUR))
    assert outcomes[-1].mask_sparsity == pytest.approx(0.5)
    reports = [json.loads(Path(o.output_dir, REPORT_NAME).read_text()) for o in outcomes]
    assert [r["sparsity_pattern"] for r in reports] == ["unstructured"] * (len(outcomes) - 1) + ["2:4"]
    assert [r.get("pattern_floor") for r in reports[:-1]] == ["2:4"] * (len(outcomes) - 1)


def test_iterative_masks_refuse_shapes_not_divisible_by_m(tmp_path):
    from smc_trainer.runs.pipeline import _iterative_masks

    config = tiny_config(tmp_path, "lrr", 1 - 2 / 128, "--sparsity_pattern", "2:128")
    model = pipeline.build_task(config).model
    with pytest.raises(ValueError, match=r"divisible by 128.*bert\.embeddings\.word_embeddings\.weight"):
        _iterative_masks(model, config.training_args, str(tmp_path))


def test_sweep_plans_the_pattern_chain_with_its_rounds_marked(tmp_path):
    from smc_trainer.runs.sweep import build_graph, make_plan, run_key
    from smc_trainer.runs.sweep_graph import SweepConfigs
    from smc_trainer.runs.variants import row_label

    plan = make_plan(["quickstart"], ["omp_after:sparsity_pattern=2:4", "lrr:sparsity_pattern=2:4"], [0.5], [0])
    (chain,) = [j for j in plan.jobs if j.kind == "chain"]
    assert chain.sparsities == pytest.approx((0.2, 0.36, 0.488, 0.5))
    assert re.search(r"lrr:sparsity_pattern=2:4 +4 x +one 4-round chain +\[0\.2, 0\.36, 0\.488, 0\.5\]",
                     plan.describe())
    configs = SweepConfigs(["--model_name_or_path", "tiny", "--report_to", "none", "--use_cpu"])
    rounds = [s for s in build_graph(plan, configs, str(tmp_path)).specs if s.kind == "round"]
    assert [dict(s.overrides).get("imp_round") for s in rounds] == [1, 2, 3, None]
    for spec in rounds:  # every round's configuration is valid and keyed as the ledger keys it
        config = spec.config(configs)
        assert config.training_args.sparsity_pattern == "2:4" and spec.key == run_key(config)
    assert row_label("lrr", {"sparsity_pattern": "2:4"}) == "LRR (After), 2:4"


def test_a_sweep_wide_pattern_is_every_sparse_methods_variant(tmp_path):
    from smc_trainer.runs.sweep import SweepArguments, run_sweep, sweep_wide_pattern
    from smc_trainer.runs.variants import parse_method_specs

    specs = parse_method_specs("dense,omp_after,lrr:criterion=snip,lth:sparsity_pattern=1:4")
    methods, argv = sweep_wide_pattern(specs, ["--use_cpu", "--sparsity_pattern=2:4"])
    assert argv == ["--use_cpu"]
    assert [s.row for s in methods] == ["dense", "omp_after:sparsity_pattern=2:4",
                                        "lrr:criterion=snip:sparsity_pattern=2:4", "lth:sparsity_pattern=1:4"]
    assert sweep_wide_pattern(specs, ["--use_cpu"]) == (specs, ["--use_cpu"])
    tiny = ["--model_name_or_path", "tiny", "--report_to", "none", "--use_cpu", "--sparsity_pattern", "2:4"]
    assert run_sweep(SweepArguments(methods="dense,lrr", sparsities="0.5", dry_run=True,
                                    sweep_dir=str(tmp_path)), tiny) == []
    with pytest.raises(ValueError, match="--sparse_method gmp cannot keep --sparsity_pattern 2:4"):
        run_sweep(SweepArguments(methods="gmp,lrr", sparsities="0.5", dry_run=True, sweep_dir=str(tmp_path)), tiny)
