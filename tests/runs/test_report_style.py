"""Report polish: sparsities read alike (percentages), every row has its own colour, and the subtitle says how
the reported checkpoint was chosen (or that none was)."""

from __future__ import annotations

import pytest

from smc_trainer.runs.report import figure, selection_note, summarize, to_markdown
from smc_trainer.runs.report_style import PALETTE, PAPER_COLORS, row_styles, sparsity_labels

PAPER_GRID = [1 - 0.8**k for k in range(1, 11)]


def test_sparsities_are_percentages_with_the_same_decimals():
    assert sparsity_labels([0.36, 0.5904, 0.790285]) == ["36.0%", "59.0%", "79.0%"]
    assert sparsity_labels(PAPER_GRID) == ["20.0%", "36.0%", "48.8%", "59.0%", "67.2%", "73.8%", "79.0%", "83.2%",
                                           "86.6%", "89.3%"]
    assert sparsity_labels([0.59, 0.5904, 0.2]) == ["59.00%", "59.04%", "20.00%"]  # more decimals only when needed
    assert sparsity_labels([]) == []


def record(method: str, sparsity: float, value: float, **extra) -> dict:
    return {"key": f"{method}/{sparsity}", "recipe": "r", "method": method, "target_sparsity": sparsity, "seed": 0,
            "metric": "accuracy", "metrics": {"eval_accuracy": value}, **extra}


def test_table_header_and_x_ticks_use_the_same_labels():
    (table,) = summarize([record("gmp", s, 0.5) for s in (0.36, 0.5904, 0.790285)])
    assert to_markdown(table).splitlines()[2] == "| method | 36.0% | 59.0% | 79.0% |"
    ticks = [t.get_text() for t in figure(table).axes[0].get_xticklabels()]
    assert ticks == ["36.0%", "59.0%", "79.0%"]


def test_sixteen_rows_get_sixteen_colours_and_markers_cycle():
    rows = [*PAPER_COLORS, "rigl:init_method=snip", "rigl:init_method=random_before", "set:init_method=snip",
            "gmp:distribution=erk", "omp_after:prune_modules=qk", "my_plugin"]
    styles = row_styles(["dense", *rows])
    assert list(styles) == rows and len(rows) == 16
    assert len({s.color for s in styles.values()}) == 16
    assert styles["random_before"].color != styles["rigl"].color  # once told apart by a dashed line only
    assert all(styles[m].color == PAPER_COLORS[m] for m in PAPER_COLORS)  # the paper's colours where free
    markers = [s.marker for s in styles.values()]
    assert all(a != b for a, b in zip(markers, markers[1:]))
    assert len({s.color for s in row_styles([f"x{i}" for i in range(len(PALETTE))]).values()}) == len(PALETTE)


def test_variant_rows_do_not_take_their_methods_colour():
    styles = row_styles(["rigl:init_method=snip", "rigl"], {"rigl:init_method=snip": {"init_method": "snip"}})
    assert styles["rigl"].color == PAPER_COLORS["rigl"] and styles["rigl:init_method=snip"].color in PALETTE
    assert (styles["rigl"].label, styles["rigl:init_method=snip"].label) == ("OMP + RigL", "SNIP + RigL")


def config(load_best: bool, select_on: str = "validation") -> dict:
    return {"config": {"training": {"load_best_model_at_end": load_best}}, "select_on": select_on}


@pytest.mark.parametrize(("records", "note"), [
    # arithmetic folds: no validation split, nothing selected, test folds pooled
    ([record("gmp", 0.5, 0.4, metrics={"test_accuracy": 0.4, "fold0/test_accuracy": 0.3, "fold1/test_accuracy": 0.5},
             **config(False))], "final model, no checkpoint selection (no validation split); 2 folds pooled"),
    ([record("gmp", 0.5, 0.4, **config(False))], "final model, no checkpoint selection"),  # CSQA: eval, no selection
    ([record("gmp", 0.5, 0.4, **config(True))], "best checkpoint on validation"),  # protein recipes
    ([record("gmp", 0.5, 0.4, **config(True, "test"))], "best checkpoint on test"),  # the original protocol
    ([record("gmp", 0.5, 0.4, **config(True)), record("lth", 0.5, 0.4, **config(False))],
     "best checkpoint on validation / final model, no checkpoint selection"),
    ([record("gmp", 0.5, 0.4)], ""),  # no training config: the table keeps its older wording
])
def test_subtitle_says_how_checkpoints_were_chosen(records, note):
    assert selection_note(records) == note
    (table,) = summarize(records, split="test" if "fold0/test_accuracy" in records[0]["metrics"] else "auto")
    subtitle = to_markdown(table).splitlines()[0]
    assert subtitle.endswith(f"; {note or 'checkpoints selected on validation'})")
