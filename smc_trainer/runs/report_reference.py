"""The paper's curves in a report (`run_smc.py report --reference`): which published panel a table matches, and
how far each of its cells is from the paper's best method and dense model at the same sparsity.

`auto` (the default) draws the paper's dashed lines where the table's recipe has a panel in
`runs/data/smc_bench_reference.yaml` and says nothing otherwise; `smc-bench` insists and names the recipes with
panels when it has none; `none` draws and compares nothing. Gaps are ours minus the paper's, in the ledgers'
scale (accuracy as a fraction), empty where the paper has no number at that sparsity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from transformers.utils import logging

from smc_trainer.errors import UsageError
from smc_trainer.runs.reference_curves import Gap, ReferencePanel, ReferencePoint, gaps, panels_for
from smc_trainer.runs.report_style import sparsity_labels
from smc_trainer.runs.variants import record_row, within_panel

if TYPE_CHECKING:
    from smc_trainer.runs.report import ResultTable

logger = logging.get_logger(__name__)

REFERENCES = ("auto", "smc-bench", "none")
GAP_FIELDS = ("paper_best_row", "paper_best", "delta_paper_best", "paper_dense", "delta_paper_dense",
              "paper_same_row", "delta_paper_same_row")
"""The CSV's columns per table with a panel (prefixed `<model>_` / `<subset>_` for a model's or a subset's table:
`graph2tree_...`, RACE `middle_...`)."""
REFERENCE_HELP = ("the paper's curves beside your rows (dashed, 'paper: GMP (During)') and each cell's gap to the "
                  "paper's best method and dense: auto (where the paper has a panel for the recipe), smc-bench "
                  "(required: an error where it has none) or none")


def check_reference(reference: str) -> None:
    if reference not in REFERENCES:
        raise UsageError(f"--reference must be one of {', '.join(REFERENCES)}; got {reference!r}")


def table_reference(table: ResultTable, reference: str = "auto") -> list[ReferencePoint]:
    """The paper's points for the table's panel: its dense baseline and the rows the table has too (ledger scale);
    [] for `none`, and for `auto` where the paper has no panel of the table's recipe and metric."""
    check_reference(reference)
    if reference == "none":
        return []
    try:
        panel = _panel(table)
    except UsageError as err:
        if reference == "smc-bench":
            raise UsageError(f"--reference smc-bench: the paper has no panel for {table.title}: {err}; "
                             f"pass --reference auto or none") from None
        logger.info(f"{table.title}: no panel in the paper ({err}); no reference lines")
        return []
    points = ((panel.dense,) if panel.dense else ()) + panel.points
    return [pt for pt in points if pt.method == "dense" or pt.method in table.methods]


def _panel(table: ResultTable) -> ReferencePanel:
    """The one panel of the paper the table matches, in the table's metric; UsageError saying why there is none."""
    panels = panels_for(table.recipe, model=table.model, subset=table.subset)
    if len(panels) > 1:
        raise UsageError(f"recipe {table.recipe!r} has {len(panels)} panels in the paper "
                         f"({', '.join(p.dataset for p in panels)}) and its records name no evaluation subset")
    (panel,) = panels
    if not table.metric_key.endswith(panel.metric):
        raise UsageError(f"the paper's {panel.dataset} panel is in {panel.metric}, the table in {table.metric_key}")
    return panel


def with_reference(table: ResultTable, reference: str = "auto") -> ResultTable:
    """The table with its `reference` points set (`table_reference`)."""
    return dataclasses.replace(table, reference=table_reference(table, reference))


def table_gaps(table: ResultTable) -> list[Gap]:
    """Each cell's gap (mean over seeds) to the paper: dense first, then rows by sparsity; [] without a panel."""
    if not table.reference:
        return []
    cells = [("dense", 0.0, table.dense[0])] if table.dense else []
    cells += [(row, s, table.cells[(row, s)][0]) for row in table.methods if row != "dense"
              for s in table.sparsities if (row, s) in table.cells]
    return gaps(table.recipe, table.reference[0].model, cells, subset=table.subset)


# ---- markdown -------------------------------------------------------------------------------------


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.4f}"


def _plain(value: float | None, row: str | None = None) -> str:
    if value is None:
        return ""
    return f"{value:.4f} ({row})" if row else f"{value:.4f}"


def gaps_markdown(table: ResultTable, display: Mapping[str, str]) -> str:
    """The table against the paper: one line per cell, ours, the paper's best there and its same row, and the
    gaps; '' without a panel. `display` names rows as the main table does."""
    found = table_gaps(table)
    if not found:
        return ""
    dense = next((pt for pt in table.reference if pt.method == "dense"), None)
    first = table.reference[0]
    lines = [
        f"#### {table.title} against the paper ({first.model} on {first.dataset}): ours minus the paper's",
        "",
        "| method | sparsity | ours | paper best | Δ paper best | paper, same row | Δ paper same row | Δ paper dense |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for gap in found:
        where = "dense" if gap.row == "dense" else sparsity_labels([gap.sparsity])[0]
        cells = (display.get(gap.row, gap.row), where, f"{gap.value:.4f}", _plain(gap.best_value, gap.best_method),
                 _signed(gap.to_best), _plain(gap.paper_value), _signed(gap.to_paper), _signed(gap.to_dense))
        lines.append("| " + " | ".join(cells) + " |")
    panel = _panel(table)
    confidences = " / ".join(sorted({pt.confidence for pt in table.reference}))
    note = (f"paper dense {dense.value:.4f}; " if dense else "") + \
        f"the paper's numbers: {panel.source}, {confidences}; empty: the paper has no number there"
    return "\n".join([*lines, "", f"_{note}_", ""]) + "\n"


# ---- CSV ------------------------------------------------------------------------------------------


def _prefix(table: ResultTable) -> str:
    return "".join(f"{q}_" for q in table.qualifiers)


def gap_columns(tables: Sequence[ResultTable]) -> list[str]:
    """The CSV's gap columns: GAP_FIELDS for each table with a panel, in table order."""
    columns: list[str] = []
    for table in tables:
        if table.reference:
            columns += [_prefix(table) + name for name in GAP_FIELDS if _prefix(table) + name not in columns]
    return columns


def record_gaps(record: Mapping[str, Any], tables: Sequence[ResultTable]) -> dict[str, Any]:
    """One record's gaps to the paper (its own value, not the seeds' mean) for each table of its recipe with a
    panel, keyed by `gap_columns`; empty values where the paper or the record has no number."""
    out: dict[str, Any] = {}
    for table in tables:
        if not table.reference or not table.holds(record):
            continue
        record = within_panel(record)
        value = record.get("metrics", {}).get(table.metric_key)
        if not isinstance(value, (int, float)):
            continue
        sparsity = 0.0 if record["method"] == "dense" else round(float(record["target_sparsity"]), 6)
        (gap,) = gaps(table.recipe, table.reference[0].model, [(record_row(record), sparsity, float(value))],
                      subset=table.subset)
        values = (gap.best_method, gap.best_value, gap.to_best, gap.dense_value, gap.to_dense, gap.paper_value,
                  gap.to_paper)
        out.update({_prefix(table) + name: v for name, v in zip(GAP_FIELDS, values)})
    return out
