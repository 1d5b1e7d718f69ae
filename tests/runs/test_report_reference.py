"""`run_smc.py report --reference`: the paper's curves drawn beside a ledger's rows, and each cell's gap to the paper.

The expected numbers are read from the package's YAML file directly (not through reference_curves) or written
out by hand from it, so a wrong scale, sparsity match or best-method pick shows."""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

import matplotlib
import pytest
import yaml

matplotlib.use("Agg")

from smc_trainer.cli import cli, main  # noqa: E402
from smc_trainer.errors import UsageError  # noqa: E402
from smc_trainer.runs.ledger import Ledger  # noqa: E402
from smc_trainer.runs.report import figure, summarize, table_styles, write_report  # noqa: E402
from smc_trainer.runs.report_reference import with_reference  # noqa: E402

SPARSITIES = (0.2, 0.36, 0.5, 0.59)  # 0.5 is off the paper's grid
# (row, sparsity) -> mean over two seeds (mean - 0.01, mean + 0.01); `set` is not in the paper's MAWPS panel
MEANS = {("dense", 0.0): 0.87, ("gmp", 0.2): 0.85, ("gmp", 0.36): 0.81, ("gmp", 0.5): 0.79, ("gmp", 0.59): 0.77,
         ("lth", 0.2): 0.86, ("lth", 0.59): 0.83, ("snip", 0.2): 0.70, ("snip", 0.36): 0.66, ("set", 0.2): 0.75}
PAPER_ROWS = {"gmp": "GMP (During)", "lth": "LTH (After)", "snip": "SNIP (Before)"}


def _records(recipe: str = "mawps") -> list[dict]:
    records = []
    for (row, sparsity), mean in MEANS.items():
        for seed, value in ((1, mean - 0.01), (2, mean + 0.01)):
            records.append({
                "key": f"{recipe}/{row}/{sparsity}/seed{seed}", "recipe": recipe, "task": "arithmetic",
                "method": row, "target_sparsity": sparsity, "mask_sparsity": sparsity, "measured_sparsity": sparsity,
                "seed": seed, "round": None, "metrics": {"test_accuracy": value}, "metric": "accuracy",
                "chance_level": None, "wall_time_s": 1.0, "steps": 10, "version": "0.1", "git_commit": None,
                "output_dir": f"runs/{row}/{sparsity}/{seed}",
            })
    return records


def _ledger(tmp_path, recipe: str = "mawps") -> str:
    ledger = Ledger(str(tmp_path / "ledger.jsonl"))
    for record in _records(recipe):
        ledger.append(record)
    return ledger.path


def _yaml_panel(dataset: str = "mawps", model: str = "gts") -> dict:
    text = (resources.files("smc_trainer.runs") / "data" / "smc_bench_reference.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    (panel,) = [p for p in data["panels"] if p["dataset"] == dataset and p["model"] == model]
    return panel


def _paper_lines(ax) -> dict[str, object]:
    return {line.get_label(): line for line in ax.get_lines() if line.get_label().startswith("paper")}


def test_report_draws_the_papers_dashed_lines_for_the_ledgers_rows_in_its_scale():
    (table,) = [with_reference(t) for t in summarize(_records())]
    ax = figure(table).axes[0]
    lines = _paper_lines(ax)
    # the rows the ledger has and the paper too, and its dense; not the paper's other rows, not our `set`
    assert set(lines) == {f"paper: {label}" for label in PAPER_ROWS.values()} | {"paper: dense"}
    assert all(line.get_linestyle() == "--" for line in lines.values())
    panel = _yaml_panel()
    series = panel["series"]
    # x: the table's categories (0.2, 0.36, 0.5, 0.59 -> 0..3); y: the yaml's percent, as the report draws accuracy
    gmp = lines["paper: GMP (During)"]
    assert list(gmp.get_xdata()) == [0, 1, 3]
    assert list(gmp.get_ydata()) == pytest.approx([series["gmp"][0], series["gmp"][1], series["gmp"][3]], abs=1e-9)
    lth = lines["paper: LTH (After)"]
    assert list(lth.get_xdata()) == [0, 1, 3]
    assert list(lth.get_ydata()) == pytest.approx([series["lth"][k] for k in (0, 1, 3)], abs=1e-9)
    snip = lines["paper: SNIP (Before)"]  # the notes give only its 20% and 89.3% points: one is in our table
    assert list(snip.get_xdata()) == [0] and list(snip.get_ydata()) == pytest.approx([series["snip"]["values"][0.2]])
    assert list(lines["paper: dense"].get_ydata()) == pytest.approx([panel["dense"]["value"]] * 2)
    styles = table_styles(table)
    assert all(lines[f"paper: {label}"].get_color() == styles[row].color for row, label in PAPER_ROWS.items())
    ours = {line.get_label(): line for line in ax.get_lines() if line.get_label() not in lines}
    assert set(ours) == {"dense", "GMP (During)", "LTH (After)", "SNIP (Before)", "OMP + SET"}
    # our rows join the cells they have (LTH at 20% and 59% only), as the paper's lines do: no NaN gaps
    assert list(ours["LTH (After)"].get_xdata()) == [0, 3]
    assert list(ours["LTH (After)"].get_ydata()) == pytest.approx([86.0, 83.0])


def _gap_table(markdown: str) -> list[str]:
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#### "))
    return [line for line in lines[start + 4:] if line.startswith("| ")]


def test_markdown_gaps_are_ours_minus_the_papers_best_and_dense(tmp_path):
    paths = write_report(_ledger(tmp_path), str(tmp_path / "report"))
    markdown = Path(paths["markdown"][0]).read_text(encoding="utf-8")
    assert "#### mawps against the paper (gts on mawps): ours minus the paper's" in markdown
    rows = _gap_table(markdown)
    assert rows[0] == "| dense | dense | 0.8700 |  |  |  |  | -0.0149 |"  # 0.87 - 0.8849
    # hand-computed from the yaml: best at 20% is LTH 88.28, at 36% LTH 88.43, at 59% LTH 86.98; dense 88.49
    assert "| gmp | 20.0% | 0.8500 | 0.8828 (lth) | -0.0328 | 0.8667 | -0.0167 | -0.0349 |" in rows
    assert "| gmp | 36.0% | 0.8100 | 0.8843 (lth) | -0.0743 | 0.8677 | -0.0577 | -0.0749 |" in rows
    assert "| gmp | 50.0% | 0.7900 |  |  |  |  | -0.0949 |" in rows  # off the paper's grid: no best, no same row
    assert "| gmp | 59.0% | 0.7700 | 0.8698 (lth) | -0.0998 | 0.8656 | -0.0956 | -0.1149 |" in rows
    assert "| lth | 59.0% | 0.8300 | 0.8698 (lth) | -0.0398 | 0.8698 | -0.0398 | -0.0549 |" in rows
    assert "| snip | 36.0% | 0.6600 | 0.8843 (lth) | -0.2243 |  |  | -0.2249 |" in rows  # elided: no SNIP there
    assert "| set | 20.0% | 0.7500 | 0.8828 (lth) | -0.1328 |  |  | -0.1349 |" in rows
    assert len(rows) == len(MEANS)
    assert "_paper dense 0.8849; the paper's numbers: Fig. 2 / Fig. 5;" in markdown


def test_csv_gaps_are_each_records_own(tmp_path):
    paths = write_report(_ledger(tmp_path), str(tmp_path / "report"))
    with open(paths["csv"][0], newline="", encoding="utf-8") as fh:
        rows = {row["key"]: row for row in csv.DictReader(fh)}
    assert len(rows) == 2 * len(MEANS)
    gmp = rows["mawps/gmp/0.36/seed1"]  # 0.80 against LTH's 88.43 and dense 88.49
    assert (gmp["paper_best_row"], float(gmp["paper_best"]), float(gmp["paper_same_row"])) == ("lth", 0.8843, 0.8677)
    assert float(gmp["delta_paper_best"]) == pytest.approx(0.80 - 0.8843, abs=1e-12)
    assert float(gmp["delta_paper_dense"]) == pytest.approx(0.80 - 0.8849, abs=1e-12)
    assert float(gmp["delta_paper_same_row"]) == pytest.approx(0.80 - 0.8677, abs=1e-12)
    off = rows["mawps/gmp/0.5/seed2"]
    assert (off["paper_best_row"], off["paper_best"], off["delta_paper_best"], off["delta_paper_same_row"]) == \
        ("", "", "", "")
    assert float(off["delta_paper_dense"]) == pytest.approx(0.80 - 0.8849, abs=1e-12)
    dense = rows["mawps/dense/0.0/seed2"]
    assert dense["delta_paper_best"] == "" and float(dense["delta_paper_dense"]) == pytest.approx(0.88 - 0.8849)


def test_reference_none_draws_and_compares_nothing(tmp_path):
    (table,) = [with_reference(t, "none") for t in summarize(_records())]
    assert table.reference == [] and _paper_lines(figure(table).axes[0]) == {}
    paths = write_report(_ledger(tmp_path), str(tmp_path / "report"), reference="none")
    assert "####" not in Path(paths["markdown"][0]).read_text(encoding="utf-8")
    with open(paths["csv"][0], newline="", encoding="utf-8") as fh:
        assert not [c for c in next(csv.reader(fh)) if "paper" in c]


def test_auto_skips_a_recipe_without_a_panel_and_smc_bench_refuses_it_before_writing(tmp_path):
    ledger = _ledger(tmp_path, recipe="quickstart")
    (table,) = [with_reference(t) for t in summarize(_records("quickstart"))]
    assert table.reference == [] and _paper_lines(figure(table).axes[0]) == {}
    out = tmp_path / "report"
    with pytest.raises(UsageError) as err:
        write_report(ledger, str(out), reference="smc-bench")
    message = str(err.value)
    assert "--reference smc-bench" in message and "'quickstart'" in message
    assert "csqa, winogrande, race, mawps, asdiv_a" in message  # the recipes that have panels
    assert not out.exists()  # refused before any file is written
    with pytest.raises(UsageError, match="--reference must be one of auto, smc-bench, none; got 'paper'"):
        write_report(ledger, str(out), reference="paper")


def test_auto_skips_a_table_matching_two_panels_or_another_metric():
    records = _records("race")  # RACE records that name no subset: the paper has a middle and a high panel
    (table,) = [with_reference(t) for t in summarize(records)]
    assert table.reference == []
    with pytest.raises(UsageError, match="'race' has 2 panels in the paper .race_middle, race_high."):
        with_reference(summarize(records)[0], "smc-bench")
    bleu = [{**r, "metric": "bleu", "metrics": {"test_bleu": 10.0}} for r in _records()]
    (table,) = [with_reference(t) for t in summarize(bleu)]
    assert table.reference == []
    with pytest.raises(UsageError, match="the paper's mawps panel is in accuracy, the table in test_bleu"):
        with_reference(summarize(bleu)[0], "smc-bench")


def test_cli_prints_the_tables_to_stdout_and_errors_in_one_line(tmp_path, capsys):
    ledger = _ledger(tmp_path)
    main(["report", ledger, "--out", str(tmp_path / "report"), "--reference", "smc-bench"])
    out = capsys.readouterr().out
    assert "\n| gmp | 36.0% | 0.8100 | 0.8843 (lth) | -0.0743 |" in out  # a table line of its own, no log prefix
    assert "\n| method | 20.0% | 36.0% | 50.0% | 59.0% |" in out
    assert not [line for line in out.splitlines() if "WARNING" in line]
    (tmp_path / "q").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        cli(["report", _ledger(tmp_path / "q", "quickstart"), "--reference", "smc-bench"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("run_smc.py: error: --reference smc-bench: the paper has no panel for quickstart")
    with pytest.raises(SystemExit):
        main(["report", ledger, "--reference", "paper"])
    assert "invalid choice: 'paper'" in capsys.readouterr().err


# ---- a model axis: GTS and Graph2Tree as the paper's two panels ------------------------------------------------


def _two_model_ledger(tmp_path) -> str:
    """asdiv_a rows of both arithmetic models, as `--methods dense,omp_after,dense:arithmetic_model=graph2tree,
    omp_after:arithmetic_model=graph2tree` writes them (the ledger's `variant` and `row` fields)."""
    ledger = Ledger(str(tmp_path / "ledger.jsonl"))
    values = {("gts", "dense"): 0.48, ("gts", "omp_after"): 0.45, ("graph2tree", "dense"): 0.52,
              ("graph2tree", "omp_after"): 0.50}
    for (model, method), value in values.items():
        variant = {} if model == "gts" else {"arithmetic_model": model}
        row = method if model == "gts" else f"{method}:arithmetic_model={model}"
        sparsity = 0.0 if method == "dense" else 0.36
        ledger.append({"key": f"asdiv_a/{row}/{sparsity}", "recipe": "asdiv_a", "task": "arithmetic",
                       "method": method, "variant": variant, "row": row, "target_sparsity": sparsity,
                       "mask_sparsity": sparsity, "measured_sparsity": sparsity, "seed": 0, "round": None,
                       "metrics": {"test_accuracy": value}, "metric": "accuracy", "chance_level": None,
                       "wall_time_s": 1.0, "steps": 10, "version": "0.1", "git_commit": None,
                       "output_dir": f"runs/{row}/{sparsity}"})
    return ledger.path


def test_each_arithmetic_model_is_its_own_panel_with_its_dense_and_the_papers_curve_of_that_model(tmp_path):
    path = _two_model_ledger(tmp_path)
    gts, g2t = [with_reference(t) for t in summarize(Ledger(path).records())]
    assert (gts.title, g2t.title, g2t.stem) == ("asdiv_a", "asdiv_a (graph2tree)", "asdiv_a-graph2tree")
    assert gts.methods == g2t.methods == ["dense", "omp_after"]  # Graph2Tree's dense is its line, not a row
    assert (gts.dense[0], g2t.dense[0]) == (0.48, 0.52)
    assert g2t.cells[("omp_after", 0.36)][0] == 0.50 and gts.cells[("omp_after", 0.36)][0] == 0.45
    paper_g2t, paper_gts = _yaml_panel("asdiv_a", "graph2tree"), _yaml_panel("asdiv_a", "gts")
    by_method = {(p.method, p.sparsity): p.value for p in g2t.reference}
    assert by_method[("dense", 0.0)] == pytest.approx(paper_g2t["dense"]["value"] / 100)
    assert by_method[("omp_after", 0.36)] == pytest.approx(paper_g2t["series"]["omp_after"][1] / 100)
    assert {(p.method, p.sparsity): p.value for p in gts.reference}[("omp_after", 0.36)] == pytest.approx(
        paper_gts["series"]["omp_after"][1] / 100)
    out = write_report(path, str(tmp_path / "out"))
    assert sorted(Path(p).name for p in out["png"]) == ["asdiv_a-graph2tree.png", "asdiv_a.png"]
    with open(out["csv"][0], newline="", encoding="utf-8") as fh:
        rows = {r["row"]: r for r in csv.DictReader(fh)}
    g2t_gap = float(rows["omp_after:arithmetic_model=graph2tree"]["graph2tree_delta_paper_same_row"])
    assert g2t_gap == pytest.approx(0.50 - paper_g2t["series"]["omp_after"][1] / 100)
    gts_gap = float(rows["omp_after"]["delta_paper_same_row"])
    assert gts_gap == pytest.approx(0.45 - paper_gts["series"]["omp_after"][1] / 100)
    assert rows["omp_after"]["graph2tree_delta_paper_same_row"] == ""
