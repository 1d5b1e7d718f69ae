"""Where each method put its weights: per-layer density by row, the picture behind the paper's App. C.

The paper explains failures by the layers a method empties: SNIP strips the embeddings, others let a
layer collapse. For every run this reads the per-layer kept counts the ledger record carries (`layers`,
or else the run folder's `sparsity_report.json`), sums them per group (embeddings, each transformer layer,
other weights, head) and averages the group densities over seeds; the plot draws one panel per sparsity,
groups along x, one line per row.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transformers.utils import logging

from smc_trainer.runs.report_style import RowStyle, sparsity_labels
from smc_trainer.runs.variants import record_row

logger = logging.get_logger(__name__)

REPORT_NAME = "sparsity_report.json"  # smc_trainer.engine.masks.REPORT_NAME, read without importing torch


@dataclass
class DensityTable:
    """Per-group densities of one recipe: `densities[(row, sparsity)][group]`, the mean over seeds."""

    recipe: str
    rows: list[str]
    sparsities: list[float]
    groups: list[str]
    densities: dict[tuple[str, float], dict[str, float]]
    seeds: dict[tuple[str, float], int]


def group_order(group: str) -> tuple[int, int, str]:
    """embeddings, layer_00, layer_01, ..., other, head."""
    match = re.fullmatch(r"layer_(\d+)", group)
    if match:
        return 1, int(match.group(1)), group
    return {"embeddings": 0, "other": 2, "head": 3}.get(group, 2), 0, group


def group_densities(layers: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """kept / total of each group's prunable weights taken together (not a mean of per-matrix densities)."""
    kept: dict[str, int] = {}
    total: dict[str, int] = {}
    for layer in layers:
        group = layer.get("group") or "other"
        kept[group] = kept.get(group, 0) + int(layer["kept"])
        total[group] = total.get(group, 0) + int(layer["total"])
    return {g: kept[g] / total[g] for g in sorted(total, key=group_order) if total[g]}


def record_layers(record: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
    """The record's per-layer counts, or its run folder's sparsity report's; None when neither has them."""
    if record.get("layers"):
        return record["layers"]
    path = os.path.join(str(record.get("output_dir") or ""), REPORT_NAME)
    if record.get("output_dir") and os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            return json.load(fh).get("layers") or None
    return None


def density_table(recipe: str, records: Sequence[Mapping[str, Any]], order: Sequence[str] = ()) -> DensityTable | None:
    """The per-group densities of a recipe's sparse runs (rows in `order` first), or None when no record has
    per-layer counts. A seed recorded twice keeps its last record, as in the accuracy tables."""
    by_seed: dict[tuple[str, float], dict[Any, dict[str, float]]] = {}
    for r in records:
        layers = None if r["method"] == "dense" else record_layers(r)
        if layers:
            cell = (record_row(r), round(float(r["target_sparsity"]), 6))
            by_seed.setdefault(cell, {})[r.get("seed")] = group_densities(layers)
    if not by_seed:
        return None
    rank = {row: i for i, row in enumerate(order)}
    rows = sorted({row for row, _ in by_seed}, key=lambda row: (rank.get(row, len(rank)), row))
    groups = sorted({g for seeds in by_seed.values() for d in seeds.values() for g in d}, key=group_order)
    densities = {cell: {g: statistics.fmean(d[g] for d in seeds.values() if g in d)
                        for g in groups if any(g in d for d in seeds.values())}
                 for cell, seeds in by_seed.items()}
    return DensityTable(recipe, rows, sorted({s for _, s in by_seed}), groups, densities,
                        {cell: len(seeds) for cell, seeds in by_seed.items()})


def _tick(group: str) -> str:
    match = re.fullmatch(r"layer_(\d+)", group)
    return f"L{int(match.group(1))}" if match else {"embeddings": "emb"}.get(group, group)


PLOT_STYLE = {"font.size": 10, "axes.spines.top": False, "axes.spines.right": False}


def plot_density(table: DensityTable, styles: Mapping[str, RowStyle], path: str) -> str:
    """Write `density_figure` as a PNG; returns `path`."""
    import matplotlib

    with matplotlib.rc_context(PLOT_STYLE):
        density_figure(table, styles).savefig(path, dpi=110, bbox_inches="tight")
    return path


def density_figure(table: DensityTable, styles: Mapping[str, RowStyle]) -> Any:
    """One panel per sparsity: the density (%) of each group (x) for each row (a line), legend below."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(4, len(table.sparsities))
    nrows = math.ceil(len(table.sparsities) / ncols)
    xs = list(range(len(table.groups)))
    with matplotlib.rc_context(PLOT_STYLE):
        fig = Figure(figsize=(max(4.0, 0.32 * len(xs) + 1.5) * ncols, 3.4 * nrows))
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
        for ax, sparsity, label in zip(axes.flat, table.sparsities, sparsity_labels(table.sparsities)):
            for row in table.rows:
                values = table.densities.get((row, sparsity))
                if values is None:
                    continue
                st = styles.get(row) or RowStyle(row, "#7f7f7f", "-", "o")
                ax.plot(xs, [100 * values.get(g, math.nan) for g in table.groups], color=st.color,
                        ls=st.linestyle, marker=st.marker, lw=1.6, ms=4, label=st.label)
            ax.set_title(f"{table.recipe}, sparsity {label}", fontsize=11)
            ax.set_xticks(xs, [_tick(g) for g in table.groups], rotation=90, fontsize=8)
            ax.set_ylim(-3, 103)
            ax.grid(True, color="0.85", lw=0.6)
            ax.set_axisbelow(True)
        for ax in axes.flat[len(table.sparsities):]:
            ax.set_visible(False)
        for ax in axes[:, 0]:
            ax.set_ylabel("density (% of weights kept)")
        handles = {h.get_label(): h for ax in axes.flat for h in ax.get_lines()}
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(4, len(handles)),
                   frameon=False, bbox_to_anchor=(0.5, 0.0))
        fig.tight_layout(rect=(0, 0.04 + 0.03 * math.ceil(len(handles) / 4), 1, 1))
    return fig
