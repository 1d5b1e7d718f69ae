"""Reports from a results ledger: per-recipe tables (markdown), a flat CSV and SMC-Bench-style plots.

A table averages the recipe's primary metric over seeds for every (method, sparsity) cell; the plot
draws it like the paper's figures: sparsities as evenly spaced categories, one line per method, the
dense model as a flat black line and the chance level as a dashed grey one.
"""

from __future__ import annotations

import csv
import math
import os
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transformers.utils import logging

from smc_trainer.errors import UsageError
from smc_trainer.methods import get_method_class, method_names
from smc_trainer.runs.ledger import Ledger

logger = logging.get_logger(__name__)

SPLITS = ("auto", "eval", "test")
MISSING = "–"
CSV_LEADING = ("key", "recipe", "method", "module_group", "target_sparsity", "mask_sparsity", "measured_sparsity",
               "seed", "round")
CSV_TRAILING = ("wall_time_s", "steps", "version", "git_commit", "output_dir")

# method -> (legend label, colour, line style), after the paper's figures
METHOD_STYLES: dict[str, tuple[str, str, str]] = {
    "dense": ("dense", "black", "-"),
    "omp_after": ("OMP (After)", "#1bb6f0", "-"),
    "random_after": ("Random (After)", "#1762b0", "-"),
    "lth": ("LTH (After)", "#ff9a0a", "-"),
    "lrr": ("LRR (After)", "#e0651b", "--"),
    "omp_before": ("OMP (Before)", "#b4b62a", "-"),
    "random_before": ("Random (Before)", "#a02a2a", "-"),
    "snip": ("SNIP (Before)", "#248a2c", "-"),
    "gmp": ("GMP (During)", "#d614c9", "-"),
    "rigl": ("RigL (Dynamic)", "#a02a2a", "--"),
    "set": ("SET (Dynamic)", "#7b4fc9", "--"),
}
EXTRA_COLORS = ("#17becf", "#8c564b", "#7f7f7f", "#bcbd22", "#e377c2", "#2ca02c", "#9467bd")

Stat = tuple[float, float, int]  # (mean, population std, number of seeds)


@dataclass
class ResultTable:
    """One recipe's results: `cells[(method, sparsity)]` and `dense` are (mean, std, n_seeds) over seeds."""

    recipe: str
    metric_key: str
    split: str
    methods: list[str]
    sparsities: list[float]
    cells: dict[tuple[str, float], Stat]
    dense: Stat | None
    chance_level: float | None
    selected_on: str = "validation"  # the split checkpoints were selected on (records' select_on)
    subset: str | None = None  # a named evaluation subset reported on its own (RACE: middle, high)

    @property
    def title(self) -> str:
        """The panel's name: the recipe, and its subset if any ("race (middle)")."""
        return f"{self.recipe} ({self.subset})" if self.subset else self.recipe

    @property
    def stem(self) -> str:
        """The panel's file name without suffix: "race-middle" for a subset, else the recipe."""
        return f"{self.recipe}-{self.subset}" if self.subset else self.recipe


# ---- aggregation ----------------------------------------------------------------------------------


def method_order(methods: Iterable[str]) -> list[str]:
    """Dense first, then the registry's order (rows `method [group]` by their method), then unknown names."""
    known = method_names()
    rank = {name: i for i, name in enumerate(known)}
    return sorted(set(methods), key=lambda m: (m != "dense", rank.get(m.split(" [", 1)[0], len(known)), m))


def row_label(record: Mapping[str, Any], by_group: bool) -> str:
    """A record's table row: its method, plus its module group (`omp_after [qk]`) when the table compares groups."""
    group = record.get("module_group")
    return f"{record['method']} [{group}]" if by_group and group and record["method"] != "dense" else record["method"]


def choose_metric_key(records: Sequence[Mapping[str, Any]], metric: str, split: str = "auto") -> tuple[str, str]:
    """(metric key, split): `auto` takes test_<metric> when every record has it, otherwise eval_<metric>."""
    if split not in SPLITS:
        raise UsageError(f"--split must be one of {', '.join(SPLITS)}; got {split!r}")
    if split == "auto":
        split = "test" if all(f"test_{metric}" in r["metrics"] for r in records) else "eval"
    return f"{split}_{metric}", split


def _stat(values: Sequence[float]) -> Stat:
    return statistics.fmean(values), statistics.pstdev(values), len(values)


def _recipe_metric(recipe: str, records: Sequence[Mapping[str, Any]]) -> str:
    names = {r["metric"] for r in records if r.get("metric")}
    if not names:
        raise UsageError(f"records of recipe {recipe!r} name no primary metric (their 'metric' field is missing)")
    if len(names) > 1:
        raise UsageError(f"records of recipe {recipe!r} disagree on the primary metric: {sorted(names)}")
    return names.pop()


def _by_seed(recipe: str, records: Sequence[Mapping[str, Any]], metric_key: str) -> dict[tuple[str, float], dict]:
    """(row, sparsity) -> {seed: value}; a seed recorded twice keeps its last record (ledger order). The row is the
    method, or `method [module group]` when the records compare several module groups."""
    groups: dict[tuple[str, float], dict[int, float]] = {}
    skipped = []
    by_group = len({r.get("module_group") for r in records if r["method"] != "dense"}) > 1  # Table 1: row per group
    for r in records:
        value = r["metrics"].get(metric_key)
        if not isinstance(value, (int, float)) or math.isnan(value):
            skipped.append(r["key"])
            continue
        sparsity = 0.0 if r["method"] == "dense" else round(float(r["target_sparsity"]), 6)
        seeds = groups.setdefault((row_label(r, by_group), sparsity), {})
        if r["seed"] in seeds:
            logger.warning(f"{recipe}: {r['method']} at sparsity {sparsity:g} has seed {r['seed']} twice; "
                           f"using the later record {r['key']}")
        seeds[r["seed"]] = float(value)
    if skipped:
        logger.warning(f"{recipe}: skipping {len(skipped)} record(s) without {metric_key!r}: {', '.join(skipped[:5])}"
                       + (" ..." if len(skipped) > 5 else ""))
    return groups


def summarize_recipe(recipe: str, records: Sequence[Mapping[str, Any]], split: str = "auto",
                     subset: str | None = None) -> ResultTable:
    """The table of one recipe's records; with `subset`, of its `<split>_<subset>_<metric>` values."""
    metric = _recipe_metric(recipe, records)
    metric_key, split = choose_metric_key(records, f"{subset}_{metric}" if subset else metric, split)
    groups = _by_seed(recipe, records, metric_key)
    dense = groups.pop(("dense", 0.0), None)
    chance = next((r["chance_level"] for r in records if r.get("chance_level") is not None), None)
    return ResultTable(
        recipe=recipe,
        metric_key=metric_key,
        split=split,
        methods=method_order([m for m, _ in groups] + (["dense"] if dense else [])),
        sparsities=sorted({s for _, s in groups}),
        cells={cell: _stat(list(seeds.values())) for cell, seeds in groups.items()},
        dense=_stat(list(dense.values())) if dense else None,
        chance_level=float(chance) if chance is not None else None,
        selected_on="/".join(sorted({str(r.get("select_on", "validation")) for r in records})),
        subset=subset,
    )


def record_subsets(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The named evaluation subsets the records' recipe reports separately (union, in order of appearance)."""
    return list(dict.fromkeys(s for r in records for s in r.get("subsets") or ()))


def summarize(records: Sequence[Mapping[str, Any]], split: str = "auto") -> list[ResultTable]:
    """One table per recipe (in order of first appearance), or one per subset for a recipe with named
    evaluation subsets (RACE: middle, high, like the paper's RACE-M / RACE-H panels); means and population
    stds over seeds."""
    if split not in SPLITS:
        raise UsageError(f"--split must be one of {', '.join(SPLITS)}; got {split!r}")
    by_recipe: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        by_recipe.setdefault(r["recipe"], []).append(r)
    tables = []
    for recipe, rs in by_recipe.items():
        for subset in record_subsets(rs) or [None]:
            table = summarize_recipe(recipe, rs, split, subset=subset)
            if table.cells or table.dense:
                tables.append(table)
            else:
                logger.warning(f"{table.title}: no record has {table.metric_key!r}; no table for it")
    return tables


# ---- markdown and CSV -----------------------------------------------------------------------------


def _sparsity_label(s: float) -> str:
    return f"{s:.3f}" if abs(round(s, 3) - s) < 1e-9 else f"{s:g}"


def _cell(stat: Stat | None) -> str:
    if stat is None:
        return MISSING
    mean, std, n = stat
    return f"{mean:.4f} ± {std:.4f}" if n > 1 else f"{mean:.4f}"


def to_markdown(table: ResultTable) -> str:
    """A GitHub markdown table: a row per method, a column per sparsity; dense repeats its value in every column."""
    sparsities = table.sparsities or [0.0]
    lines = [
        f"### {table.title}: {table.metric_key} ({table.split} split; checkpoints selected on {table.selected_on})",
        "",
        "| method | " + " | ".join(_sparsity_label(s) for s in sparsities) + " |",
        "| --- | " + " | ".join("---:" for _ in sparsities) + " |",
    ]
    for method in table.methods:
        if method == "dense":
            row = [_cell(table.dense)] * len(sparsities)
        else:
            row = [_cell(table.cells.get((method, s))) for s in sparsities]
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    seeds = sorted({n for _, _, n in table.cells.values()} | ({table.dense[2]} if table.dense else set()))
    note = f"mean over {'/'.join(map(str, seeds))} seed(s)" + (", ± population std" if seeds[-1] > 1 else "")
    if table.chance_level is not None:
        note += f"; chance level {table.chance_level:.4f}"
    lines += ["", f"_{note}_"]
    return "\n".join(lines) + "\n"


def to_csv(records: Sequence[Mapping[str, Any]], path: str) -> str:
    """One row per record: its identity, every metric as a column (union over records, sorted) and provenance."""
    metric_keys = sorted({k for r in records for k in r.get("metrics", {})})
    columns = [*CSV_LEADING, *metric_keys, *CSV_TRAILING]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, restval="", extrasaction="ignore")
        writer.writeheader()
        for r in records:
            row = {c: r.get(c) for c in (*CSV_LEADING, *CSV_TRAILING)}
            row.update(r.get("metrics", {}))
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return path


# ---- plots ----------------------------------------------------------------------------------------


def method_style(method: str, index: int = 0) -> tuple[str, str, str]:
    """(label, colour, line style) of a method; unknown methods get a label from their phase and a spare colour."""
    if method in METHOD_STYLES:
        return METHOD_STYLES[method]
    try:
        label = f"{method} ({get_method_class(method).phase.title()})"
    except ValueError:
        label = method
    return label, EXTRA_COLORS[index % len(EXTRA_COLORS)], "-"


def plot(table: ResultTable, path: str) -> str:
    """Write the table as a PNG in the style of the paper's figures; returns `path`."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scale = 100.0 if table.metric_key.endswith("accuracy") else 1.0
    ylabel = "accuracy (%)" if scale == 100.0 else table.metric_key.split("_", 1)[-1]
    xs = list(range(len(table.sparsities) or 1))
    style = {"font.size": 11, "axes.spines.top": False, "axes.spines.right": False}
    with matplotlib.rc_context(style):
        fig = Figure(figsize=(6.4, 5.0))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        if table.dense is not None:
            ax.plot(xs, [table.dense[0] * scale] * len(xs), color="black", marker="o", lw=2, ms=6, label="dense")
        for i, method in enumerate(m for m in table.methods if m != "dense"):
            _plot_method(ax, table, method, xs, scale, method_style(method, i))
        if table.chance_level is not None:
            ax.axhline(table.chance_level * scale, color="grey", ls="--", lw=1.5, label="chance", zorder=1)
        ax.set_xticks(xs, [f"{s:g}" for s in table.sparsities] or ["0"], rotation=45)
        ax.set_xlabel("Sparsity", fontsize=13)
        ax.set_ylabel(ylabel, fontsize=13)
        ax.set_title(table.title, fontsize=14)
        ax.grid(True, color="0.75", lw=0.8)
        ax.set_axisbelow(True)
        fig.tight_layout()
        _legend_below(fig, ax)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def _legend_below(fig: Any, ax: Any) -> None:
    """The legend in columns under the axes' x label, as in the paper; savefig's tight bbox makes room for it."""
    bottom = ax.get_tightbbox(fig.canvas.get_renderer()).y0
    y = ax.transAxes.inverted().transform((0.0, bottom))[1]
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, y - 0.02), ncol=3, frameon=False, fontsize=10)


def _plot_method(ax: Any, table: ResultTable, method: str, xs: list[int], scale: float,
                 style: tuple[str, str, str]) -> None:
    """One method's line (NaN where a cell is missing) with a faint ±std band where there are several seeds."""
    label, color, ls = style
    stats = [table.cells.get((method, s)) for s in table.sparsities]
    means = [st[0] * scale if st else math.nan for st in stats]
    ax.plot(xs, means, color=color, ls=ls, marker="o", lw=2, ms=6, label=label, zorder=3)
    if any(st and st[2] > 1 for st in stats):
        low = [(st[0] - st[1]) * scale if st else math.nan for st in stats]
        high = [(st[0] + st[1]) * scale if st else math.nan for st in stats]
        ax.fill_between(xs, low, high, color=color, alpha=0.15, lw=0, zorder=2)


# ---- the report -----------------------------------------------------------------------------------


def _file_name(recipe: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", recipe) or "recipe"


def write_report(ledger_path: str, out_dir: str, split: str = "auto") -> dict[str, list[str]]:
    """results.md, results.csv and <recipe>.png (<recipe>-<subset>.png per subset) in `out_dir` from the ledger;
    returns the paths by kind."""
    records = Ledger(ledger_path).records()
    if not records:
        where = "is empty" if os.path.exists(ledger_path) else "does not exist"
        raise UsageError(f"ledger {ledger_path} has no records (the file {where}); run a sweep first")
    tables = summarize(records, split=split)
    os.makedirs(out_dir, exist_ok=True)
    markdown = os.path.join(out_dir, "results.md")
    with open(markdown, "w", encoding="utf-8") as fh:
        fh.write(f"# Results\n\nFrom `{ledger_path}` ({len(records)} runs).\n\n")
        fh.write("\n".join(to_markdown(t) for t in tables))
    pngs = [plot(t, os.path.join(out_dir, f"{_file_name(t.stem)}.png")) for t in tables]
    return {"markdown": [markdown], "csv": [to_csv(records, os.path.join(out_dir, "results.csv"))], "png": pngs}
