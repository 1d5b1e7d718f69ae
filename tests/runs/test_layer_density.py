"""The per-layer density picture (smc_trainer.runs.layer_density): group densities computed from the ledger's
per-layer counts (or a run folder's sparsity_report.json), a panel per sparsity, linked from results.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from smc_trainer.runs.layer_density import REPORT_NAME, density_figure, density_table, group_densities
from smc_trainer.runs.ledger import Ledger
from smc_trainer.runs.report import write_report
from smc_trainer.runs.report_style import row_styles

# (group, matrix name, total); two matrices of different sizes per group, so a mean of per-matrix densities
# (a planted bug) gives other numbers than kept / total of the group
MATRICES = [("head", "classifier.weight", 50), ("layer_01", "layer.1.q", 100), ("layer_01", "layer.1.ffn", 400),
            ("embeddings", "word", 1000), ("embeddings", "position", 100), ("layer_00", "layer.0.q", 100),
            ("layer_00", "layer.0.ffn", 400)]
# kept counts per (row, sparsity, seed), in MATRICES order
KEPT = {
    ("snip", 0.5, 0): (50, 100, 400, 10, 50, 100, 390),
    ("snip", 0.5, 1): (50, 100, 380, 0, 30, 100, 400),
    ("gmp", 0.5, 0): (25, 50, 200, 500, 50, 50, 200),
    ("gmp", 0.5, 1): (25, 50, 200, 500, 50, 50, 200),
    ("gmp", 0.75, 0): (10, 30, 100, 250, 20, 30, 90),
    ("rigl:init_method=snip", 0.5, 0): (40, 90, 350, 20, 10, 90, 350),
}
EXPECTED = {  # by hand: (kept of the group's matrices) / (their total), then the mean over seeds
    ("snip", 0.5): {"embeddings": (60 / 1100 + 30 / 1100) / 2, "layer_00": (490 / 500 + 1.0) / 2,
                    "layer_01": (1.0 + 480 / 500) / 2, "head": 1.0},
    ("gmp", 0.5): {"embeddings": 550 / 1100, "layer_00": 250 / 500, "layer_01": 250 / 500, "head": 0.5},
    ("gmp", 0.75): {"embeddings": 270 / 1100, "layer_00": 120 / 500, "layer_01": 130 / 500, "head": 0.2},
    ("rigl:init_method=snip", 0.5): {"embeddings": 30 / 1100, "layer_00": 440 / 500, "layer_01": 440 / 500,
                                     "head": 0.8},
}


def layers(kept: tuple[int, ...]) -> list[dict]:
    return [{"name": name, "group": group, "total": total, "kept": k}
            for (group, name, total), k in zip(MATRICES, kept)]


def records(tmp_path: Path, report_file_for: str | None = None) -> list[dict]:
    """Hand-made records of recipe `r` (dense + the KEPT runs); the `report_file_for` row's counts live only in
    its run folder's sparsity_report.json, as for a record whose ledger line lacks them."""
    out = [{"key": "d", "recipe": "r", "method": "dense", "target_sparsity": 0.0, "seed": 0, "metric": "accuracy",
            "metrics": {"eval_accuracy": 0.9}, "layers": layers(tuple(t for _, _, t in MATRICES))}]
    for (row, sparsity, seed), kept in KEPT.items():
        method, _, variant = row.partition(":init_method=")
        record = {"key": f"{row}/{sparsity}/{seed}", "recipe": "r", "method": method, "target_sparsity": sparsity,
                  "seed": seed, "metric": "accuracy", "metrics": {"eval_accuracy": 0.5}, "row": row,
                  "variant": {"init_method": variant} if variant else {}, "layers": layers(kept)}
        if row == report_file_for:
            run_dir = tmp_path / "runs" / f"{row}-{sparsity}-{seed}"
            run_dir.mkdir(parents=True)
            (run_dir / REPORT_NAME).write_text(json.dumps({"layers": record.pop("layers")}))
            record["output_dir"] = str(run_dir)
        out.append(record)
    return out


@pytest.mark.parametrize("from_file", [None, "gmp"])
def test_group_densities_are_kept_over_total_per_group_averaged_over_seeds(tmp_path, from_file):
    table = density_table("r", records(tmp_path, report_file_for=from_file), order=["gmp", "snip"])
    assert table.groups == ["embeddings", "layer_00", "layer_01", "head"]  # model order, not file order
    assert table.rows == ["gmp", "snip", "rigl:init_method=snip"]  # the report's order first; dense left out
    assert table.sparsities == [0.5, 0.75]
    assert set(table.densities) == set(EXPECTED)
    for cell, want in EXPECTED.items():
        assert table.densities[cell] == pytest.approx(want, abs=1e-12), cell
    assert table.seeds[("snip", 0.5)] == 2 and table.seeds[("gmp", 0.75)] == 1


def test_group_densities_of_one_run():
    assert group_densities(layers(KEPT[("snip", 0.5, 0)])) == pytest.approx(
        {"embeddings": 60 / 1100, "layer_00": 490 / 500, "layer_01": 1.0, "head": 1.0})
    assert list(group_densities([{"group": "layer_10", "total": 4, "kept": 1}, {"group": "other", "total": 2,
                                  "kept": 2}, {"group": "layer_9", "total": 4, "kept": 4}])) == [
        "layer_9", "layer_10", "other"]


def test_records_without_counts_give_no_table(tmp_path):
    bare = [{k: v for k, v in r.items() if k != "layers"} for r in records(tmp_path)]
    assert density_table("r", bare) is None


def test_figure_draws_each_rows_densities_per_sparsity(tmp_path):
    table = density_table("r", records(tmp_path), order=["gmp", "snip", "rigl:init_method=snip"])
    styles = row_styles(table.rows, {"rigl:init_method=snip": {"init_method": "snip"}})
    axes = [ax for ax in density_figure(table, styles).axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["r, sparsity 50.0%", "r, sparsity 75.0%"]
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["emb", "L0", "L1", "head"]
    drawn = {line.get_label(): list(line.get_ydata()) for line in axes[0].get_lines()}
    assert list(drawn) == ["GMP (During)", "SNIP (Before)", "SNIP + RigL"]
    assert drawn["SNIP (Before)"] == pytest.approx([100 * EXPECTED[("snip", 0.5)][g] for g in table.groups])
    assert [line.get_label() for line in axes[1].get_lines()] == ["GMP (During)"]


def test_write_report_writes_and_links_the_density_plot(tmp_path):
    ledger = Ledger(str(tmp_path / "ledger.jsonl"))
    for record in records(tmp_path):
        ledger.append(record)
    out = tmp_path / "report"
    paths = write_report(ledger.path, str(out))
    assert paths["density"] == [str(out / "r-density.png")] and paths["png"] == [str(out / "r.png")]
    pixels = imread(paths["density"][0])[..., :3]
    colors = np.unique((pixels * 255).round().astype(int).reshape(-1, 3), axis=0)
    assert len(colors) > 20  # lines in several colours, not a blank canvas
    markdown = Path(paths["markdown"][0]).read_text(encoding="utf-8")
    assert "[r-density.png](r-density.png)" in markdown and "[r.png](r.png)" in markdown
