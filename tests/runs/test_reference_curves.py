"""The paper's published curves: the package data loads and ships, its numbers are SMC-BENCH.md's, its rows are
this project's, and the API converts to the ledgers' scale, compares and draws."""

from __future__ import annotations

import runpy
from importlib import resources
from pathlib import Path

import matplotlib
import pytest
import yaml

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402

from smc_trainer.errors import UsageError  # noqa: E402
from smc_trainer.methods import method_names  # noqa: E402
from smc_trainer.runs.presets import preset_names  # noqa: E402
from smc_trainer.runs.recipes import available_recipes  # noqa: E402
from smc_trainer.runs.reference_curves import (  # noqa: E402
    CONFIDENCES,
    DATA_FILE,
    PAPER_GRID,
    RECIPE_DATASETS,
    TABLE1_SPARSITY,
    gaps,
    load_reference,
    paper_best,
    paper_chance,
    paper_dense,
    plot_reference,
    reference_for,
)
from smc_trainer.runs.report_style import PAPER_COLORS  # noqa: E402
from smc_trainer.runs.variants import parse_method_spec, row_method  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def every_point():
    return [pt for panel in load_reference() for pt in (panel.dense, *panel.points) if pt is not None]


def value_at(recipe: str, method: str, sparsity: float, **kw) -> float:
    (pt,) = [p for p in reference_for(recipe, **kw) if p.method == method and abs(p.sparsity - sparsity) < 1e-3]
    return pt.value


def test_the_data_file_is_package_data_and_setup_ships_it(monkeypatch):
    text = (resources.files("smc_trainer.runs") / "data" / DATA_FILE).read_text(encoding="utf-8")
    assert yaml.safe_load(text)["panels"]
    captured = {}
    monkeypatch.setattr("setuptools.setup", lambda **kw: captured.update(kw))
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(ROOT / "setup.py"))
    patterns = captured["package_data"]["smc_trainer"]
    shipped = {p for pattern in patterns for p in (ROOT / "smc_trainer").glob(pattern)}
    assert ROOT / "smc_trainer" / "runs" / "data" / DATA_FILE in shipped


@pytest.mark.parametrize(("recipe", "method", "sparsity", "value", "kw"), [
    ("asdiv_a", "lth", 0.2, 0.8027, {}),
    ("asdiv_a", "omp_after", 0.893, 0.6393, {}),
    ("asdiv_a", "omp_before", 0.59, 0.0082, {}),  # "78.14, 71.73, then 0.82"
    ("mawps", "random_after", 0.8325, 0.7979, {}),
    ("svamp", "gmp", 0.893, 0.301, {}),
    ("asdiv_a", "omp_after", 0.866, 0.5053, {"model": "graph2tree"}),
    ("svamp", "lth", 0.738, 0.331, {"model": "graph2tree"}),
    ("csqa", "lth", 0.488, 0.696, {}),
    ("csqa", "rigl", 0.2, 0.603, {}),  # OMP+RigL
    ("winogrande", "gmp", 0.738, 0.567, {}),
    ("race", "lth", 0.866, 0.39, {"subset": "middle"}),
    ("race-high", "lth", 0.866, 0.368, {}),
    ("hp_s", "omp_after:prune_modules=qkvo_ffn", 0.2, 0.686, {}),
    ("hp_s", "gmp:prune_modules=qkvo_ffn", 0.866, 0.598, {"model": "tape"}),
    ("hp_s2c2", "omp_after:prune_modules=qk", TABLE1_SPARSITY, 0.9362, {}),
    ("meltome", "lth:prune_modules=qkvo_ffn", 0.36, 0.443, {}),
    ("mt_5to5", "lth", 0.893, 7.3, {}),  # BLEU stays in BLEU points
    ("mt_10to10", "omp_after", 0.2, 18.3, {}),
])
def test_spot_values_match_the_reference_notes(recipe, method, sparsity, value, kw):
    assert value_at(recipe, method, sparsity, **kw) == pytest.approx(value)


def test_dense_and_chance_are_the_papers_in_ledger_scale():
    assert paper_dense("asdiv_a") == pytest.approx(0.7864)
    assert paper_dense("asdiv_a", model="graph2tree") == pytest.approx(0.8061)
    assert paper_dense("csqa") == pytest.approx(0.773)
    assert paper_dense("csqa", sparsity=0.59) == paper_dense("csqa")
    assert paper_dense("race", subset="middle") == pytest.approx(0.866)
    assert paper_dense("hp_s2c2") == pytest.approx(0.9468)
    assert paper_dense("mt_2to2") == pytest.approx(7.1)
    assert (paper_chance("csqa"), paper_chance("winogrande"), paper_chance("race-high")) == (0.2, 0.5, 0.25)
    assert paper_chance("mawps") is None  # the paper states none


def test_ranges_hold_low_and_high_and_elisions_only_their_endpoints():
    (pt,) = [p for p in reference_for("csqa") if p.method == "omp_after" and abs(p.sparsity - 0.59) < 1e-3]
    assert (pt.low, pt.value, pt.high) == pytest.approx((0.19, 0.20, 0.21)) and pt.is_range
    snip = sorted(p.sparsity for p in reference_for("mawps") if p.method == "snip")
    assert snip == [PAPER_GRID[0], PAPER_GRID[-1]]  # "82.19 … 80.83": nothing invented in between
    assert all(p.low is None and p.high is None for p in reference_for("asdiv_a") if p.method == "lth")


def test_every_point_has_a_source_a_confidence_and_a_metric():
    points = every_point()
    assert len(points) > 500
    assert all(pt.source and pt.confidence in CONFIDENCES for pt in points)
    assert all(pt.metric in ("accuracy", "bleu") for pt in points)
    assert all(0 <= pt.value <= 1 for pt in points if pt.metric == "accuracy")
    exact = {pt.confidence for pt in points if pt.model in ("gts", "graph2tree") and pt.method in ("lth", "dense")}
    assert exact == {"exact"}  # the released logs [C-num]
    assert {pt.confidence for pt in points if pt.dataset == "mt_5to5"} == {"figure, about 1 point"}


def test_every_row_is_a_method_or_preset_of_this_project():
    known = set(method_names()) | set(preset_names())
    for row in {pt.method for pt in every_point()}:
        assert row_method(row) in known, row
        assert parse_method_spec(row).row == row  # a valid `--methods` spec, written as our ledgers write it
    rows = {pt.method for pt in reference_for("csqa")}
    assert {"rigl", "rigl:init_method=snip", "rigl:init_method=random_before", "dense"} <= rows


def test_sparsities_are_on_the_papers_grid():
    for pt in every_point():
        if pt.method == "dense":
            assert pt.sparsity == 0.0
        elif pt.dataset == "hp_s2c2":
            assert pt.sparsity == TABLE1_SPARSITY  # Table 1's 5%
        else:
            assert pt.sparsity in PAPER_GRID, pt
    protein = [pt.sparsity for pt in every_point() if pt.model in ("esm-1b", "tape", "esm-if1")]
    assert max(protein) == PAPER_GRID[8]  # protein uses the first 9 levels


def test_every_dataset_key_has_a_panel_and_the_recipes_exist():
    assert set(RECIPE_DATASETS) <= set(available_recipes())
    datasets = {panel.dataset for panel in load_reference()}
    assert datasets == {d for keys, _ in RECIPE_DATASETS.values() for d in keys}
    assert {p.dataset for p in reference_for("race")} == {"race_middle", "race_high"}
    with pytest.raises(UsageError, match="recipe must be one of"):
        reference_for("quickstart")
    with pytest.raises(UsageError, match="model for asdiv_a must be one of graph2tree, gts"):
        reference_for("asdiv_a", model="roberta-large")
    with pytest.raises(UsageError, match="pass subset"):
        paper_dense("race")


def test_paper_best_takes_the_top_method_at_a_sparsity():
    assert paper_best("asdiv_a", 0.2) == ("lth", pytest.approx(0.8027))
    assert paper_best("asdiv_a", 0.893) == ("gmp", pytest.approx(0.6779))
    assert paper_best("asdiv_a", 0.5904) == ("gmp", pytest.approx(0.7535))  # the exact grid value matches too
    assert paper_best("mt_2to2", 0.59) is None  # elided: no number there


def test_gaps_to_the_papers_best_dense_and_same_row():
    got = gaps("asdiv_a", "gts", [("lth", 0.2, 0.75), ("gmp", 0.36, 0.80), ("omp_after", 0.05, 0.5),
                                  ("lth:distribution=erk", 0.893, 0.6)])
    lth, gmp, off_grid, variant = got
    assert (lth.best_method, lth.to_best, lth.to_dense, lth.to_paper) == (
        "lth", pytest.approx(0.75 - 0.8027), pytest.approx(0.75 - 0.7864), pytest.approx(0.75 - 0.8027))
    assert (gmp.best_method, gmp.best_value, gmp.paper_value) == ("lth", pytest.approx(0.7938), pytest.approx(0.7855))
    assert gmp.to_best == pytest.approx(0.80 - 0.7938) and gmp.to_paper == pytest.approx(0.80 - 0.7855)
    assert (off_grid.best_method, off_grid.to_best, off_grid.paper_value) == (None, None, None)
    assert off_grid.to_dense == pytest.approx(0.5 - 0.7864)  # dense is one number for every sparsity
    assert variant.best_method == "gmp" and variant.paper_value is None  # the paper has no ERK row


def test_plot_reference_draws_dashed_labelled_lines():
    fig = Figure()
    ax = fig.add_subplot()
    points = reference_for("csqa")
    positions = {s: i for i, s in enumerate(PAPER_GRID)}
    lines = plot_reference(ax, points, positions=positions, scale=100.0)
    labels = [line.get_label() for line in lines]
    assert "paper: LTH (After)" in labels and "paper: OMP + RigL" in labels and "paper: SNIP + RigL" in labels
    assert labels[-1] == "paper: dense"
    assert all(line.get_linestyle() == "--" for line in lines)
    (lth,) = [line for line in lines if line.get_label() == "paper: LTH (After)"]
    assert list(lth.get_xdata()) == list(range(10)) and lth.get_ydata()[0] == pytest.approx(76.0)
    assert lth.get_color() == PAPER_COLORS["lth"]
    assert ax.collections  # the ranges' vertical bars


def test_plot_reference_takes_the_reports_styles_and_skips_unplaced_sparsities():
    from smc_trainer.runs.report_style import RowStyle

    ax = Figure().add_subplot()
    style = RowStyle("mine", "#123456", "-", "o")
    lines = plot_reference(ax, reference_for("mawps"), positions={PAPER_GRID[0]: 0.0}, styles={"lth": style},
                           dense=False)
    (lth,) = [line for line in lines if line.get_label() == "paper: mine"]
    assert lth.get_color() == "#123456" and lth.get_linestyle() == "--" and list(lth.get_xdata()) == [0.0]
    assert "paper: dense" not in [line.get_label() for line in lines]
