"""Reports read back what the ledger holds: markdown means, CSV rows and a real (non-blank) plot per recipe."""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.image import imread

from smc_trainer.runs.ledger import Ledger
from smc_trainer.runs.report import plot, summarize, to_markdown, write_report

SPARSITIES = (0.2, 0.36, 0.488)
SEEDS = (1, 2)
METHODS = ("dense", "gmp", "lth")
# csqa has no test split (as the real recipe); quickstart has both
RECIPES = {"csqa": ("eval",), "quickstart": ("eval", "test")}


def _records() -> list[dict]:
    rng = random.Random(0)
    records = []
    for recipe, splits in RECIPES.items():
        for method in METHODS:
            for sparsity in (0.0,) if method == "dense" else SPARSITIES:
                for seed in SEEDS:
                    metrics = {f"{split}_{name}": rng.uniform(0.2, 0.9) for split in splits
                               for name in ("accuracy", "loss")}
                    records.append({
                        "key": f"{recipe}/{method}/{sparsity}/seed{seed}", "recipe": recipe, "task": "multiple_choice",
                        "method": method, "target_sparsity": sparsity, "mask_sparsity": sparsity,
                        "measured_sparsity": sparsity * 0.99, "seed": seed, "round": None, "metrics": metrics,
                        "metric": "accuracy", "chance_level": 0.2 if recipe == "csqa" else None,
                        "wall_time_s": rng.uniform(1, 10), "steps": 100, "version": "0.1", "git_commit": None,
                        "output_dir": f"/runs/{recipe}/{method}/{sparsity}/{seed}",
                    })
    return records


def _write_ledger(path, records: list[dict]) -> str:
    ledger = Ledger(str(path))
    for record in records:
        ledger.append(record)
    return str(path)


@pytest.fixture
def ledger_path(tmp_path) -> str:
    return _write_ledger(tmp_path / "ledger.jsonl", _records())


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _expected(records: list[dict], recipe: str, key: str) -> dict[tuple[str, float], tuple[float, float]]:
    groups: dict[tuple[str, float], list[float]] = {}
    for r in records:
        if r["recipe"] == recipe:
            groups.setdefault((r["method"], r["target_sparsity"]), []).append(r["metrics"][key])
    return {cell: _mean_std(values) for cell, values in groups.items()}


def _parse_markdown(text: str) -> dict[str, tuple[str, list[float], dict[str, list[str]]]]:
    """recipe -> (metric key, sparsities, {method: cells}) from the report's markdown (its main tables: a
    `####` table against the paper ends one)."""
    tables: dict = {}
    recipe = None
    for line in text.splitlines():
        if line.startswith("### "):
            recipe, rest = line[4:].split(": ", 1)
            tables[recipe] = (rest.split(" ")[0], [], {})
        elif line.startswith("#### ") or recipe is None:
            recipe = None
        elif line.startswith("| method |"):
            tables[recipe][1].extend(round(float(c.rstrip("%")) / 100, 6) for c in line.strip("| ").split(" | ")[1:])
        elif line.startswith("| ") and not line.startswith("| ---"):
            cells = line.strip("| ").split(" | ")
            tables[recipe][2][cells[0]] = cells[1:]
    return tables


def test_markdown_numbers_are_the_ledgers_means(ledger_path, tmp_path):
    records = _records()
    paths = write_report(ledger_path, str(tmp_path / "report"))
    tables = _parse_markdown(Path(paths["markdown"][0]).read_text(encoding="utf-8"))
    assert set(tables) == set(RECIPES)
    for recipe, (metric_key, sparsities, rows) in tables.items():
        assert metric_key == ("test_accuracy" if recipe == "quickstart" else "eval_accuracy")
        assert sparsities == list(SPARSITIES)
        assert list(rows) == ["dense", "lth", "gmp"]  # dense first, then the registry's order
        expected = _expected(records, recipe, metric_key)
        for method, cells in rows.items():
            for sparsity, cell in zip(sparsities, cells):
                mean, std = (float(x) for x in cell.split(" ± "))  # two seeds: always "mean ± std"
                want = expected[(method, 0.0 if method == "dense" else sparsity)]
                assert (mean, std) == pytest.approx(want, abs=5.1e-5)


def test_single_seed_has_no_std_missing_cells_dash_and_unknown_methods_last(caplog):
    base = {"recipe": "r", "metric": "bleu", "seed": 0}
    records = [
        {**base, "key": "a", "method": "zeta", "target_sparsity": 0.5, "metrics": {"eval_bleu": 12.5}},
        {**base, "key": "b", "method": "alpha", "target_sparsity": 0.2, "metrics": {"eval_bleu": 20.0}},
        {**base, "key": "c", "method": "gmp", "target_sparsity": 0.2, "metrics": {"eval_bleu": 25.0}},
        {**base, "key": "d", "method": "lth", "target_sparsity": 0.5, "metrics": {"eval_loss": 1.0}},  # skipped
    ]
    (table,) = summarize(records)
    assert table.methods == ["gmp", "alpha", "zeta"] and table.dense is None and table.chance_level is None
    assert table.cells[("gmp", 0.2)] == (25.0, 0.0, 1)
    assert "skipping 1 record(s) without 'eval_bleu': d" in caplog.text
    text = to_markdown(table)
    assert text.splitlines()[0] == "### r: eval_bleu (eval split; checkpoints selected on validation)"
    assert "| gmp | 25.0000 | – |" in text and "| zeta | – | 12.5000 |" in text and "±" not in text


def test_csv_has_one_row_per_record_with_its_metrics(ledger_path, tmp_path):
    records = _records()
    paths = write_report(ledger_path, str(tmp_path / "report"))
    with open(paths["csv"][0], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(records)
    metric_keys = sorted({k for r in records for k in r["metrics"]})
    assert [c for c in rows[0] if c in metric_keys] == metric_keys
    for row, record in zip(rows, records):
        assert row["key"] == record["key"] and row["method"] == record["method"]
        assert float(row["target_sparsity"]) == record["target_sparsity"] and row["round"] == ""
        for k in metric_keys:
            assert (float(row[k]) if row[k] else None) == record["metrics"].get(k)


def test_png_is_a_real_non_blank_plot(ledger_path, tmp_path):
    backend, font_size = matplotlib.get_backend(), matplotlib.rcParams["font.size"]
    out = tmp_path / "report"
    paths = write_report(ledger_path, str(out))
    assert sorted(paths["png"]) == [str(out / "csqa.png"), str(out / "quickstart.png")]
    for png in paths["png"]:
        data = Path(png).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
        pixels = imread(png)[..., :3]
        assert pixels.var() > 0
        colors, counts = np.unique((pixels * 255).round().astype(int).reshape(-1, 3), axis=0, return_counts=True)
        assert (counts > 50).sum() >= 4  # white, black (dense), grey (grid) and the method colours
        saturated = colors[(colors.max(axis=1) - colors.min(axis=1) > 100) & (counts > 50)]
        assert len(saturated) >= 2  # gmp (magenta) and lth (orange)
    assert matplotlib.get_backend() == backend and matplotlib.rcParams["font.size"] == font_size


def test_plot_of_one_table_returns_its_path(tmp_path):
    (table,) = summarize([r for r in _records() if r["recipe"] == "csqa"])
    path = str(tmp_path / "one.png")
    assert plot(table, path) == path and Path(path).read_bytes()[:4] == b"\x89PNG"


def test_split_auto_takes_test_only_when_every_record_has_it():
    records = _records()
    assert {t.recipe: t.split for t in summarize(records)} == {"csqa": "eval", "quickstart": "test"}
    records[-1]["metrics"] = {k: v for k, v in records[-1]["metrics"].items() if not k.startswith("test_")}
    quickstart = {t.recipe: t for t in summarize(records)}["quickstart"]
    assert (quickstart.split, quickstart.metric_key) == ("eval", "eval_accuracy")
    forced = {t.recipe: t for t in summarize(records, split="test")}
    assert set(forced) == {"quickstart"}  # csqa has no test metric at all: no table
    assert sum(n for _, _, n in forced["quickstart"].cells.values()) == 11  # the record without test is skipped


def test_unknown_split_raises(ledger_path, tmp_path):
    with pytest.raises(ValueError, match="auto, eval, test.*'validation'"):
        summarize(_records(), split="validation")
    with pytest.raises(ValueError, match="auto, eval, test"):
        write_report(ledger_path, str(tmp_path / "report"), split="dev")


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_empty_ledger_raises(tmp_path, make):
    path = tmp_path / "ledger.jsonl"
    if make == "empty":
        path.write_text("")
    with pytest.raises(ValueError, match="no records"):
        write_report(str(path), str(tmp_path / "report"))
    assert not (tmp_path / "report").exists()


def test_report_creates_out_dir_and_keeps_other_files(ledger_path, tmp_path):
    out = tmp_path / "a" / "b"
    paths = write_report(ledger_path, str(out))
    (out / "notes.txt").write_text("mine")
    write_report(ledger_path, str(out))
    assert (out / "notes.txt").read_text() == "mine"
    assert set(paths) == {"markdown", "csv", "png", "density"} and paths["density"] == []  # no per-layer counts
    assert all(p.startswith(str(out)) for ps in paths.values() for p in ps)
