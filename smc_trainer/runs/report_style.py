"""How a report draws and names things: one colour, marker and line style per row, and sparsity labels.

Every row of a plot gets its own colour (the paper's colour for a plain method when it is free, else the
next colour of a palette of 18 distinct ones), and markers cycle as a second cue, so no two rows differ by
line style alone. Sparsities are written as the paper writes them, percentages with one decimal (more only
where two would read the same).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from smc_trainer.runs.variants import row_label, row_method

# the paper's colours (Figures 2-5); RigL gets its own (the paper dashes its RigL rows in their init's colour)
PAPER_COLORS: dict[str, str] = {
    "omp_after": "#1bb6f0",
    "random_after": "#1762b0",
    "lth": "#ff9a0a",
    "lrr": "#e0651b",
    "omp_before": "#b4b62a",
    "random_before": "#a02a2a",
    "snip": "#248a2c",
    "gmp": "#d614c9",
    "rigl": "#5c4a1e",
    "set": "#7b4fc9",
}
DASHED = frozenset({"lrr", "rigl", "set"})
# distinct colours for variant rows and methods the paper lacks (no black or greys: dense and chance use them)
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#469990",
           "#9a6324", "#800000", "#808000", "#000075", "#fabed4", "#aaffc3", "#dcbeff", "#ffd8b1", "#ffe119")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


@dataclass(frozen=True)
class RowStyle:
    """How one row is drawn: its legend label (the paper's words), colour, line style and marker."""

    label: str
    color: str
    linestyle: str
    marker: str


def row_styles(rows: Sequence[str], variants: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, RowStyle]:
    """A style per row id (dense excluded), in order: distinct colours while the palette lasts (28 with the
    paper's), markers cycling. `variants` gives each row's typed variant for its label (default: none)."""
    variants = variants or {}
    rows = [r for r in dict.fromkeys(rows) if r != "dense"]
    colors: dict[str, str] = {}
    for row in rows:  # plain methods first take the paper's colour
        preferred = PAPER_COLORS.get(row)
        if preferred and preferred not in colors.values():
            colors[row] = preferred
    spare = [c for c in PALETTE if c not in colors.values()]
    for i, row in enumerate(r for r in rows if r not in colors):
        colors[row] = spare[i % len(spare)]
    styles = {}
    for i, row in enumerate(rows):
        method = row_method(row)
        variant = variants.get(row, {})
        dashed = method in DASHED or bool(variant)
        styles[row] = RowStyle(row_label(method, variant), colors[row], "--" if dashed else "-",
                               MARKERS[i % len(MARKERS)])
    return styles


def sparsity_labels(sparsities: Sequence[float]) -> list[str]:
    """Percentages with one decimal ("59.0%"), or the fewest more decimals that keep distinct values apart."""
    for decimals in range(1, 5):
        labels = [f"{100 * s:.{decimals}f}%" for s in sparsities]
        if len(set(labels)) == len(set(sparsities)):
            return labels
    return [f"{100 * s:g}%" for s in sparsities]
