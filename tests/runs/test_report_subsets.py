"""Recipes with named evaluation subsets (RACE: middle, high): the ledger carries them and the report
draws one table and one plot per subset from `<split>_<subset>_<metric>`, like the paper's RACE-M / RACE-H."""

from __future__ import annotations

import random
import statistics
from pathlib import Path

import pytest
from sparse_helpers import quickstart_config

from smc_trainer.runs.ledger import Ledger
from smc_trainer.runs.report import plot, summarize, to_markdown, write_report
from smc_trainer.runs.run_config import RunOutcome
from smc_trainer.runs.sweep import make_record, run_key

SPARSITIES = (0.2, 0.36)
SEEDS = (1, 2)


def config_for(recipe: str, method: str, sparsity: float, seed: int, tmp_path: Path):
    return quickstart_config(tmp_path, method, sparsity, "--prune_frequency", "1", "--rigl_update_interval", "1",
                             recipe=recipe, seed=seed)


def ledger_records(tmp_path: Path, with_test: bool = True) -> list[dict]:
    """Records as a sweep writes them (make_record on real recipe configs) for race and csqa, random metrics."""
    rng = random.Random(0)
    records = []
    for recipe in ("race", "csqa"):
        for method in ("dense", "gmp"):
            for sparsity in (0.0,) if method == "dense" else SPARSITIES:
                for seed in SEEDS:
                    if recipe == "race":
                        splits = ("eval", "test") if with_test else ("eval",)
                        metrics = {f"{split}_{s}_accuracy": rng.uniform(0.25, 0.9) for split in splits
                                   for s in ("middle", "high")}
                        metrics.update({f"{split}_accuracy": rng.uniform(0.25, 0.9) for split in splits})
                    else:
                        metrics = {"eval_accuracy": rng.uniform(0.2, 0.8)}
                    config = config_for(recipe, method, sparsity, seed, tmp_path)
                    outcome = RunOutcome(method=method, target_sparsity=sparsity, mask_sparsity=sparsity,
                                         measured_sparsity=sparsity, metrics=metrics, output_dir="o", steps=1,
                                         wall_time_s=1.0)
                    records.append(make_record(config, outcome, run_key(config)))
    return records


def write_ledger(path: Path, records: list[dict]) -> str:
    ledger = Ledger(str(path))
    for record in records:
        ledger.append(record)
    return str(path)


def mean_of(records: list[dict], recipe: str, method: str, sparsity: float, key: str) -> float:
    return statistics.fmean(r["metrics"][key] for r in records
                            if r["recipe"] == recipe and r["method"] == method and r["target_sparsity"] == sparsity)


def test_ledger_records_carry_the_recipes_subsets(tmp_path):
    records = ledger_records(tmp_path)
    assert {r["recipe"]: tuple(r["subsets"]) for r in records} == {"race": ("middle", "high"), "csqa": ()}
    assert {r["recipe"]: r["chance_level"] for r in records} == {"race": 0.25, "csqa": 0.2}


def test_one_table_per_subset_from_the_subset_metrics(tmp_path):
    records = ledger_records(tmp_path)
    tables = {t.title: t for t in summarize(records)}
    assert list(tables) == ["race (middle)", "race (high)", "csqa"]  # no pooled "race" panel
    for subset in ("middle", "high"):
        table = tables[f"race ({subset})"]
        assert (table.recipe, table.subset, table.split) == ("race", subset, "test")
        assert table.metric_key == f"test_{subset}_accuracy" and table.chance_level == 0.25
        assert table.dense[0] == pytest.approx(mean_of(records, "race", "dense", 0.0, table.metric_key))
        for s in SPARSITIES:
            assert table.cells[("gmp", s)][0] == pytest.approx(mean_of(records, "race", "gmp", s, table.metric_key))
            assert table.cells[("gmp", s)][2] == len(SEEDS)
        assert to_markdown(table).splitlines()[0] == (
            f"### race ({subset}): test_{subset}_accuracy (test split; final model, no checkpoint selection)")
    csqa = tables["csqa"]
    assert (csqa.subset, csqa.metric_key) == (None, "eval_accuracy")  # recipes without subsets: as before


def test_subsets_fall_back_to_validation_without_test_metrics(tmp_path):
    tables = {t.title: t for t in summarize(ledger_records(tmp_path, with_test=False))}
    assert tables["race (high)"].metric_key == "eval_high_accuracy"
    assert tables["race (middle)"].split == "eval"


def test_report_writes_a_plot_per_subset(tmp_path):
    records = ledger_records(tmp_path)
    out = tmp_path / "report"
    paths = write_report(write_ledger(tmp_path / "ledger.jsonl", records), str(out))
    assert paths["png"] == [str(out / "race-middle.png"), str(out / "race-high.png"), str(out / "csqa.png")]
    assert all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in paths["png"])
    markdown = Path(paths["markdown"][0]).read_text(encoding="utf-8")
    assert markdown.count("### race (middle): test_middle_accuracy") == 1
    assert markdown.count("### race (high): test_high_accuracy") == 1
    assert "### race:" not in markdown and markdown.count("### csqa: eval_accuracy") == 1


def test_records_missing_a_subset_metric_are_skipped(tmp_path, caplog):
    records = ledger_records(tmp_path)
    victim = next(r for r in records if r["recipe"] == "race" and r["method"] == "gmp")
    victim["metrics"] = {k: v for k, v in victim["metrics"].items() if not k.startswith("test_")}
    tables = {t.title: t for t in summarize(records)}
    # one record lacks test metrics: auto falls back to validation for both subsets, as for whole recipes
    assert tables["race (high)"].metric_key == "eval_high_accuracy"
    forced = {t.title: t for t in summarize(records, split="test")}
    assert forced["race (high)"].cells[("gmp", victim["target_sparsity"])][2] == len(SEEDS) - 1
    assert "skipping 1 record(s) without 'test_high_accuracy'" in caplog.text


def test_plot_title_names_the_subset(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    titles = []
    original = Axes.set_title
    monkeypatch.setattr(Axes, "set_title", lambda ax, label, *a, **kw: titles.append(label) or original(ax, label,
                                                                                                         *a, **kw))
    table = next(t for t in summarize(ledger_records(tmp_path)) if t.subset == "high")
    plot(table, str(tmp_path / "p.png"))
    assert titles == ["race (high)"]
