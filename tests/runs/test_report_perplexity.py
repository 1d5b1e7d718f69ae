"""Perplexity beside task accuracy (LLM-KICK's view): a ledger whose runs carry `test_perplexity` and `test_accuracy`
gets a two-panel figure on one sparsity axis with one colour per row (perplexity on a log scale, collapsed values
clipped and marked) and a second table whose best is the lowest; 2:4 and 4:8, both 50%, stay two rows. Records
are written as a sweep writes them (make_record on parsed one-shot configurations) through the ledger's writer."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import pytest
from matplotlib.image import imread
from sparse_helpers import quickstart_config

from smc_trainer.runs.ledger import Ledger
from smc_trainer.runs.metric_direction import best_key, direction_words, lower_is_better
from smc_trainer.runs.reference_curves import ReferencePoint, _best
from smc_trainer.runs.report import (
    PERPLEXITY_CLIP,
    best_rows,
    display_name,
    figure,
    summarize,
    to_markdown,
    write_report,
)
from smc_trainer.runs.run_config import RunOutcome
from smc_trainer.runs.sweep import make_record, run_key

CRITERIA = ("magnitude", "wanda", "sparsegpt")
PATTERNS = ("unstructured", "2:4", "4:8")
SPARSITIES = (0.5, 0.6, 0.7)
SEEDS = (0, 1)
ONESHOT = ("--max_steps", "0", "--prune_embeddings", "false", "--distribution", "uniform")
# (accuracy, perplexity) at seed 0 per (criterion, pattern, sparsity); seed 1 adds (+0.01, +0.2): perplexity stays
# near dense (5.0) while accuracy falls, magnitude collapses at 70% (a perplexity far above the clip), and the best
# accuracy and the best perplexity are different rows at 50% (SparseGPT 2:4 and Wanda), so a reversed direction fails
VALUES = {
    ("magnitude", "unstructured", 0.5): (0.40, 9.0), ("magnitude", "unstructured", 0.6): (0.30, 40.0),
    ("magnitude", "unstructured", 0.7): (0.22, 3.2e5),
    ("wanda", "unstructured", 0.5): (0.55, 5.6), ("wanda", "unstructured", 0.6): (0.45, 6.5),
    ("wanda", "unstructured", 0.7): (0.30, 11.0),
    ("sparsegpt", "unstructured", 0.5): (0.56, 5.8), ("sparsegpt", "unstructured", 0.6): (0.48, 6.3),
    ("sparsegpt", "unstructured", 0.7): (0.33, 9.5),
    ("magnitude", "2:4", 0.5): (0.25, 90.0), ("magnitude", "4:8", 0.5): (0.28, 60.0),
    ("wanda", "2:4", 0.5): (0.41, 11.5), ("wanda", "4:8", 0.5): (0.46, 8.6),
    ("sparsegpt", "2:4", 0.5): (0.60, 10.2), ("sparsegpt", "4:8", 0.5): (0.47, 8.1),
}
DENSE = (0.62, 5.0)
W24, W48 = "Wanda (Before), uniform, 2:4", "Wanda (Before), uniform, 4:8"  # the rows' labels in the paper's words


def row_of(criterion: str, pattern: str) -> str:
    """The row id a sweep's `oneshot` grid gives the run (smc_trainer.runs.sweep.METHOD_GRIDS)."""
    row = "omp_before" if criterion == "magnitude" else f"omp_before:criterion={criterion}"
    row += ":distribution=uniform"
    return row if pattern == "unstructured" else f"{row}:sparsity_pattern={pattern}"


def _record(tmp_path: Path, method: str, sparsity: float, seed: int, value: tuple[float, float] | None,
            *flags: str) -> dict:
    config = quickstart_config(tmp_path, method, sparsity, *ONESHOT, *flags, seed=seed)
    metrics = {"test_accuracy": value[0] + 0.01 * seed, "eval_accuracy": value[0],
               "test_perplexity": value[1] + 0.2 * seed, "eval_perplexity": value[1]} if value else {}
    outcome = RunOutcome(method=method, target_sparsity=sparsity, mask_sparsity=sparsity, measured_sparsity=sparsity,
                         metrics=metrics, output_dir="o", steps=0, wall_time_s=1.0)
    return make_record(config, outcome, run_key(config))


def grid_records(tmp_path: Path) -> list[dict]:
    records = [_record(tmp_path, "dense", 0.0, seed, DENSE) for seed in SEEDS]
    for (criterion, pattern, sparsity), value in VALUES.items():
        flags = [] if criterion == "magnitude" else ["--criterion", criterion]
        flags += [] if pattern == "unstructured" else ["--sparsity_pattern", pattern]
        records += [_record(tmp_path, "omp_before", sparsity, seed, value, *flags) for seed in SEEDS]
    return records


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> list[dict]:
    return grid_records(tmp_path_factory.mktemp("grid"))


def without_perplexity(records: list[dict]) -> list[dict]:
    return [{**r, "metrics": {k: v for k, v in r["metrics"].items() if "perplexity" not in k}} for r in records]


def mean(values) -> float:
    return statistics.fmean(values)


# ---- the direction of a metric ---------------------------------------------------------------------------


def test_direction_is_a_property_of_the_metric_name():
    keys = ("test_perplexity", "perplexity", "eval_loss", "test_accuracy", "test_middle_accuracy", "eval_bleu")
    assert [lower_is_better(k) for k in keys] == [True, True, True, False, False, False]
    assert direction_words("test_perplexity") == "lower is better"
    assert direction_words("eval_accuracy") == "higher is better"
    values = {"a": 3.0, "b": 1.0, "c": 1.0, "d": 3.0}
    assert best_key(values, "test_perplexity") == "b" and best_key(values, "test_accuracy") == "a"  # ties: first
    assert best_key({}, "test_accuracy") is None


def test_the_papers_best_follows_its_metric_direction():
    def point(method: str, value: float, metric: str) -> ReferencePoint:
        return ReferencePoint("m", "d", method, 0.5, value, None, None, "s", "exact", metric=metric)

    assert _best([point("a", 0.4, "accuracy"), point("b", 0.7, "accuracy")]).method == "b"
    assert _best([point("a", 12.0, "perplexity"), point("b", 7.0, "perplexity"), point("c", 9.0, "perplexity")]
                 ).method == "b"


# ---- tables ---------------------------------------------------------------------------------------------


def test_perplexity_is_the_tables_companion_with_nm_rows_kept_apart(records):
    (table,) = summarize(records)
    companion = table.companion
    assert (table.metric_key, companion.metric_key) == ("test_accuracy", "test_perplexity")
    assert table.sparsities == companion.sparsities == list(SPARSITIES)
    rows = [row_of(c, p) for c in CRITERIA for p in PATTERNS]
    assert table.methods == companion.methods and set(table.methods) == {"dense", *rows}
    assert companion.chance_level is None and companion.companion is None
    for (criterion, pattern, sparsity), (acc, ppl) in VALUES.items():
        row = row_of(criterion, pattern)
        assert table.cells[(row, sparsity)][:2] == pytest.approx((acc + 0.005, 0.005))
        assert companion.cells[(row, sparsity)][:2] == pytest.approx((ppl + 0.1, 0.1))
    # 2:4 and 4:8 are both 50%: two rows with their own cells there, and nothing at 60% or 70%
    two, four = row_of("wanda", "2:4"), row_of("wanda", "4:8")
    assert table.cells[(two, 0.5)][0] != table.cells[(four, 0.5)][0]
    assert not any((row, s) in table.cells for row in (two, four) for s in (0.6, 0.7))
    assert companion.dense[:2] == pytest.approx((DENSE[1] + 0.1, 0.1))


def test_best_is_the_highest_accuracy_and_the_lowest_perplexity(records):
    (table,) = summarize(records)
    for t, index, pick in ((table, 0, max), (table.companion, 1, min)):
        want = {}
        for s in SPARSITIES:
            here = {row_of(c, p): v[index] for (c, p, sp), v in VALUES.items() if sp == s}
            want[s] = pick(here, key=here.__getitem__)
        assert best_rows(t) == want
    assert best_rows(table)[0.5] == row_of("sparsegpt", "2:4")
    assert best_rows(table.companion)[0.5] == row_of("wanda", "unstructured")


def _markdown_tables(text: str) -> dict[str, tuple[str, list[str], dict[str, list[str]]]]:
    """metric key -> (heading, column labels, {row name: cells}) of each `###` table."""
    tables: dict = {}
    key = None
    for line in text.splitlines():
        if line.startswith("### "):
            key = line.split(": ", 1)[1].split(" ")[0]
            tables[key] = (line, [], {})
        elif key and line.startswith("| method |"):
            tables[key][1].extend(line.strip("| ").split(" | ")[1:])
        elif key and line.startswith("| ") and not line.startswith("| ---"):
            cells = line.strip("| ").split(" | ")
            tables[key][2][cells[0]] = cells[1:]
    return tables


def test_markdown_has_both_tables_and_bolds_each_columns_best(records):
    (table,) = summarize(records)
    tables = _markdown_tables(to_markdown(table))
    assert list(tables) == ["test_accuracy", "test_perplexity"]
    assert "(higher is better; test split;" in tables["test_accuracy"][0]
    assert "(lower is better; test split;" in tables["test_perplexity"][0]
    for key, t in (("test_accuracy", table), ("test_perplexity", table.companion)):
        heading, columns, rows = tables[key]
        assert columns == ["50.0%", "60.0%", "70.0%"]
        assert list(rows)[0] == "dense" and len(rows) == 1 + len(CRITERIA) * len(PATTERNS)
        assert "omp_before [criterion=wanda, sparsity_pattern=2:4]" in rows
        assert "omp_before [criterion=wanda, sparsity_pattern=4:8]" in rows
        bold = {(name, columns[i]) for name, cells in rows.items() for i, c in enumerate(cells) if c.startswith("**")}
        best = best_rows(t)
        assert bold == {(display_name(t, row), f"{100 * s:.1f}%") for s, row in best.items()}
    wanda_24 = tables["test_perplexity"][2]["omp_before [criterion=wanda, sparsity_pattern=2:4]"]
    assert wanda_24 == ["11.6000 ± 0.1000", "–", "–"]
    assert "bold: each column's best sparse row (highest accuracy, lowest perplexity)" in to_markdown(table)


# ---- the figure -----------------------------------------------------------------------------------------


def _lines(ax) -> dict[str, object]:
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def test_figure_has_two_panels_on_one_axis_with_one_colour_per_row(records):
    (table,) = summarize(records)
    fig = figure(table)
    left, right = fig.axes
    assert (left.get_yscale(), right.get_yscale()) == ("linear", "log")
    assert [t.get_text() for t in left.get_xticklabels()] == [t.get_text() for t in right.get_xticklabels()] \
        == ["50.0%", "60.0%", "70.0%"]
    assert "perplexity" in right.get_ylabel() and "lower is better" in right.get_ylabel()
    lines_left, lines_right = _lines(left), _lines(right)
    labels = {"dense", "OMP (Before), uniform", W24, W48, "SparseGPT (Before), uniform"}
    assert labels <= set(lines_left) and labels <= set(lines_right)
    rows = [label for label in lines_left if label not in ("dense", "chance")]
    assert len(rows) == len(CRITERIA) * len(PATTERNS)
    for label in rows:
        assert lines_left[label].get_color() == lines_right[label].get_color()
    assert len({lines_left[label].get_color() for label in rows}) == len(rows)
    # accuracy in percent on the left; perplexity as measured on the right, the collapsed one drawn at the clip
    wanda = lines_left["Wanda (Before), uniform"]
    assert list(wanda.get_ydata()) == pytest.approx([55.5, 45.5, 30.5])
    magnitude = lines_right["OMP (Before), uniform"]
    assert list(magnitude.get_ydata()) == pytest.approx([9.1, 40.1, PERPLEXITY_CLIP])
    assert f"clipped at {PERPLEXITY_CLIP:.0e}" in lines_right
    assert [t.get_text() for t in right.texts] == [f"{3.2e5 + 0.1:.1e}"]
    assert max(max(line.get_ydata()) for line in right.get_lines()) == PERPLEXITY_CLIP
    # 2:4 and 4:8 at 50% sit side by side, not on top of each other
    xs = {label: lines_left[label].get_xdata()[0] for label in (W24, W48)}
    assert xs[W24] != xs[W48] and all(abs(x) < 0.5 for x in xs.values())
    assert lines_left["Wanda (Before), uniform"].get_xdata()[0] == 0
    assert len(fig.legends) == 1 and left.get_legend() is None  # one legend for both panels


def test_report_files_show_both_metrics(records, tmp_path):
    ledger = Ledger(str(tmp_path / "ledger.jsonl"))
    for record in records:
        ledger.append(record)
    paths = write_report(ledger.path, str(tmp_path / "report"))
    (png,) = paths["png"]
    height, width = imread(png).shape[:2]
    assert width > 1.6 * height  # two panels side by side
    markdown = Path(paths["markdown"][0]).read_text(encoding="utf-8")
    assert "### quickstart: test_accuracy (higher is better;" in markdown
    assert "### quickstart: test_perplexity (lower is better;" in markdown
    with open(paths["csv"][0], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(records) and {"test_accuracy", "test_perplexity"} <= set(rows[0])
    labels = {row["label"] for row in rows}
    assert {W24, W48, "SparseGPT (Before), uniform, 2:4"} <= labels


def test_a_ledger_without_perplexity_renders_as_before(records, tmp_path):
    plain = without_perplexity(records)
    (table,) = summarize(plain)
    assert table.companion is None and table.sparsities == list(SPARSITIES)
    text = to_markdown(table)
    assert "**" not in text and "is better" not in text and text.count("### ") == 1
    assert text.splitlines()[0] == ("### quickstart: test_accuracy (test split; final model, no checkpoint "
                                    "selection)")
    fig = figure(table)
    assert len(fig.axes) == 1 and fig.axes[0].get_yscale() == "linear" and not fig.legends
    ledger = Ledger(str(tmp_path / "ledger.jsonl"))
    for record in plain:
        ledger.append(record)
    (png,) = write_report(ledger.path, str(tmp_path / "report"))["png"]
    height, width = imread(png).shape[:2]
    assert width < 1.6 * height


def test_runs_without_perplexity_leave_gaps_in_its_table(records):
    """Records that did not measure a perplexity (here: every Wanda run) have no cells in the companion table and
    keep theirs in the accuracy table; mean accuracy of SparseGPT at 60% is unchanged."""
    mixed = [without_perplexity([r])[0] if "criterion=wanda" in r["row"] else r for r in records]
    (table,) = summarize(mixed)
    assert not any(row.startswith("omp_before:criterion=wanda") for row, _ in table.companion.cells)
    assert (row_of("wanda", "unstructured"), 0.5) in table.cells
    sgpt = [r["metrics"]["test_accuracy"] for r in records
            if r["row"] == row_of("sparsegpt", "unstructured") and r["target_sparsity"] == 0.6]
    assert table.cells[(row_of("sparsegpt", "unstructured"), 0.6)][0] == pytest.approx(mean(sgpt))


def test_a_recipe_whose_primary_metric_is_perplexity_draws_it_on_a_log_scale():
    base = {"recipe": "wikitext", "metric": "perplexity", "seed": 0}
    values = {"dense": (0.0, 6.0), "wanda_before": (0.5, 7.5), "omp_before": (0.5, 2e4)}
    records = [{**base, "key": method, "method": method, "target_sparsity": sparsity,
                "metrics": {"eval_perplexity": value}} for method, (sparsity, value) in values.items()]
    (table,) = summarize(records)
    assert table.companion is None and table.metric_key == "eval_perplexity"
    assert best_rows(table) == {0.5: "wanda_before"}
    (ax,) = figure(table).axes
    assert ax.get_yscale() == "log" and max(max(line.get_ydata()) for line in ax.get_lines()) == PERPLEXITY_CLIP
    assert "**" not in to_markdown(table)  # one metric: no bold, as every single-metric table
