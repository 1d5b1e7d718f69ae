"""Reports from a results ledger: per-recipe tables (markdown), a flat CSV and SMC-Bench-style plots.

A table averages the recipe's primary metric over seeds for every (row, sparsity) cell, where a row is a
method variant (`smc_trainer.runs.variants`: `rigl:init_method=snip` is its own row); the plot draws it
like the paper's figures: sparsities as evenly spaced categories, one line per row in the paper's words,
the dense model as a flat black line and the chance level as a dashed grey one. Where the paper has a panel
for the recipe, its curves are drawn beside them as thin dashed lines ("paper: GMP (During)") and a second
table gives each cell's gap to the paper (`smc_trainer.runs.report_reference`). Next to it, a per-layer
density plot (`smc_trainer.runs.layer_density`) shows where each row kept its weights.

Where the runs also measured a perplexity (`test_perplexity` / `eval_perplexity`, a causal LM's), it is the
table's *companion*: the figure gets a second panel on the same sparsity axis and row colours (the task metric
left, perplexity right on a log scale, values above `PERPLEXITY_CLIP` drawn at the clip and marked), and the
markdown a second table, each column's best sparse cell in bold by its metric's direction
(`smc_trainer.runs.metric_direction`: the highest accuracy, the lowest perplexity). LLM-KICK's finding,
perplexity near dense while task accuracy collapses, is then on one plot. Ledgers without a perplexity render
as before.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers.utils import logging

from smc_trainer.engine.patterns import parse_pattern
from smc_trainer.errors import UsageError
from smc_trainer.methods import method_names
from smc_trainer.runs.layer_density import density_table, plot_density
from smc_trainer.runs.ledger import Ledger
from smc_trainer.runs.metric_direction import best_key, direction_words
from smc_trainer.runs.reference_curves import ReferencePoint, plot_reference
from smc_trainer.runs.report_reference import check_reference, gap_columns, gaps_markdown, record_gaps, with_reference
from smc_trainer.runs.report_style import RowStyle, row_styles, sparsity_labels
from smc_trainer.runs.variants import (
    Variant,
    format_value,
    record_panel,
    record_row,
    record_variant,
    row_label,
    row_method,
    within_panel,
)

logger = logging.get_logger(__name__)

SPLITS = ("auto", "eval", "test")
MISSING = "–"
CSV_LEADING = ("key", "recipe", "method", "row", "label", "module_group", "target_sparsity", "mask_sparsity",
               "measured_sparsity", "seed", "round")
CSV_TRAILING = ("wall_time_s", "steps", "version", "git_commit", "output_dir")
PLOT_STYLE = {"font.size": 11, "axes.spines.top": False, "axes.spines.right": False}
COMPANION_METRIC = "perplexity"  # drawn and tabled beside a recipe's primary metric when the runs measured it
PERPLEXITY_CLIP = 1e4  # perplexities above it are drawn at it, marked with their value (a collapsed model's)
DODGE = 0.08  # x offset between N:M rows at the same sparsity (2:4 and 4:8 are both 50%), in category widths

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
    model: str | None = None  # a panel axis's value (`variants.record_panel`: "graph2tree"); None: the recipe's model
    variants: dict[str, Variant] = field(default_factory=dict)  # row -> its variant (non-default axis values)
    selection: str = ""  # what the reported checkpoints are (see `selection_note`); "" for the old wording
    reference: list[ReferencePoint] = field(default_factory=list)  # the paper's points drawn beside it, if any
    companion: ResultTable | None = None  # the same runs' perplexity, tabled and drawn beside this table

    @property
    def qualifiers(self) -> list[str]:
        return [q for q in (self.model, self.subset) if q]

    @property
    def title(self) -> str:
        """The panel's name: the recipe, and its model and subset if any ("race (middle)", "asdiv_a (graph2tree)")."""
        return f"{self.recipe} ({', '.join(self.qualifiers)})" if self.qualifiers else self.recipe

    @property
    def stem(self) -> str:
        """The panel's file name without suffix: "race-middle", "asdiv_a-graph2tree", else the recipe."""
        return "-".join([self.recipe, *self.qualifiers])

    def holds(self, record: Mapping[str, Any]) -> bool:
        """Whether `record` is one of this table's runs (its recipe and model panel)."""
        return record.get("recipe") == self.recipe and record_panel(record) == self.model


# ---- aggregation ----------------------------------------------------------------------------------


def method_order(methods: Iterable[str]) -> list[str]:
    """Dense first, then the registry's order (variant rows `rigl:init_method=snip` by their method, the plain
    method first), then unknown names."""
    known = method_names()
    rank = {name: i for i, name in enumerate(known)}
    return sorted(set(methods), key=lambda m: (m != "dense", rank.get(row_method(m), len(known)), m))


def shared_values(table: ResultTable) -> Variant:
    """Variant values every sparse row of the table has: the table names them once, under it, not per row."""
    rows = [table.variants.get(m, {}) for m in table.methods if m != "dense"]
    if not rows:
        return {}
    return {k: v for k, v in rows[0].items() if all(k in r and r[k] == v for r in rows[1:])}


def display_name(table: ResultTable, row: str) -> str:
    """A row's name in the table: its method, plus its values that not every row shares (`omp_after [qk]`,
    `rigl [init_method=snip]`); a table of one module group reads as before variants existed."""
    shared = shared_values(table)
    variant = table.variants.get(row, {})
    parts = [format_value(v) if k == "prune_modules" else f"{k}={format_value(v)}"
             for k, v in variant.items() if k not in shared]
    return f"{row_method(row)} [{', '.join(parts)}]" if parts else row_method(row)


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
    method and its variant (`rigl:init_method=snip`, `omp_after:prune_modules=qk`; `record_row`)."""
    groups: dict[tuple[str, float], dict[int, float]] = {}
    skipped = []
    for r in records:
        value = r["metrics"].get(metric_key)
        if not isinstance(value, (int, float)) or math.isnan(value):
            skipped.append(r["key"])
            continue
        sparsity = 0.0 if r["method"] == "dense" else round(float(r["target_sparsity"]), 6)
        seeds = groups.setdefault((record_row(r), sparsity), {})
        if r["seed"] in seeds:
            logger.warning(f"{recipe}: {record_row(r)} at sparsity {sparsity:g} has seed {r['seed']} twice; "
                           f"using the later record {r['key']}")
        seeds[r["seed"]] = float(value)
    if skipped:
        logger.warning(f"{recipe}: skipping {len(skipped)} record(s) without {metric_key!r}: {', '.join(skipped[:5])}"
                       + (" ..." if len(skipped) > 5 else ""))
    return groups


def summarize_recipe(recipe: str, records: Sequence[Mapping[str, Any]], split: str = "auto",
                     subset: str | None = None, model: str | None = None, metric: str | None = None
                     ) -> ResultTable:
    """The table of one recipe's records (of one model panel: `within_panel` records); with `subset`, of its
    `<split>_<subset>_<metric>` values. `metric` defaults to the records' primary metric (their `metric` field)."""
    metric = metric or _recipe_metric(recipe, records)
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
        model=model,
        variants={record_row(r): record_variant(r) for r in records},
        selection=selection_note(records),
    )


def selection_note(records: Sequence[Mapping[str, Any]]) -> str:
    """What the reported numbers come from, in the records' own terms: the best checkpoint on a split (when the
    run selected one: `load_best_model_at_end`), else the final model, saying when there was no validation split
    and when cross-validation folds were pooled. "" when the records do not carry their training config."""
    notes = []
    for r in records:
        training = (r.get("config") or {}).get("training")
        if not isinstance(training, Mapping):
            return ""
        if training.get("load_best_model_at_end"):
            note = f"best checkpoint on {r.get('select_on', 'validation')}"
        else:
            note = "final model, no checkpoint selection"
            if not any(k.startswith("eval_") for k in r["metrics"]):
                note += " (no validation split)"
        folds = {k.split("/", 1)[0] for k in r["metrics"] if re.match(r"fold\d+/", k)}
        if folds:
            note += f"; {len(folds)} folds pooled"
        notes.append(note)
    return " / ".join(dict.fromkeys(notes))


def record_subsets(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The named evaluation subsets the records' recipe reports separately (union, in order of appearance)."""
    return list(dict.fromkeys(s for r in records for s in r.get("subsets") or ()))


def summarize(records: Sequence[Mapping[str, Any]], split: str = "auto") -> list[ResultTable]:
    """One table per recipe and model panel (in order of first appearance: GTS and Graph2Tree, as the paper's
    Fig. 2), or one per subset for a recipe with named evaluation subsets (RACE: middle, high, like the paper's
    RACE-M / RACE-H panels); means and population stds over seeds."""
    if split not in SPLITS:
        raise UsageError(f"--split must be one of {', '.join(SPLITS)}; got {split!r}")
    by_panel: dict[tuple[str, str | None], list[Mapping[str, Any]]] = {}
    for r in records:
        by_panel.setdefault((r["recipe"], record_panel(r)), []).append(within_panel(r))
    tables = []
    for (recipe, model), rs in by_panel.items():
        companion = companion_table(recipe, rs, split, model=model)
        for subset in record_subsets(rs) or [None]:
            table = summarize_recipe(recipe, rs, split, subset=subset, model=model)
            if table.cells or table.dense:
                tables.append(table if companion is None else beside(table, companion))
            else:
                logger.warning(f"{table.title}: no record has {table.metric_key!r}; no table for it")
    return tables


def companion_table(recipe: str, records: Sequence[Mapping[str, Any]], split: str = "auto",
                    model: str | None = None) -> ResultTable | None:
    """The records' perplexity table (`COMPANION_METRIC`), when some record measured one and the primary metric is
    another; else None."""
    keys = {f"{s}_{COMPANION_METRIC}" for s in ("eval", "test")}
    if not any(keys & set(r["metrics"]) for r in records) or _recipe_metric(recipe, records) == COMPANION_METRIC:
        return None
    table = summarize_recipe(recipe, records, split, model=model, metric=COMPANION_METRIC)
    # the records' chance level is the task metric's: a perplexity has none
    return dataclasses.replace(table, chance_level=None) if table.cells or table.dense else None


def beside(table: ResultTable, companion: ResultTable) -> ResultTable:
    """`table` with `companion` attached, both on the union of their rows and sparsities (one axis, one legend)."""
    methods = method_order([*table.methods, *companion.methods])
    sparsities = sorted({*table.sparsities, *companion.sparsities})
    variants = {**companion.variants, **table.variants}
    companion = dataclasses.replace(companion, methods=methods, sparsities=sparsities, variants=variants)
    return dataclasses.replace(table, methods=methods, sparsities=sparsities, variants=variants, companion=companion)


# ---- markdown and CSV -----------------------------------------------------------------------------


def _cell(stat: Stat | None, bold: bool = False) -> str:
    if stat is None:
        return MISSING
    mean, std, n = stat
    text = f"{mean:.4f} ± {std:.4f}" if n > 1 else f"{mean:.4f}"
    return f"**{text}**" if bold else text


def best_rows(table: ResultTable) -> dict[float, str]:
    """sparsity -> the sparse row with the best mean there, by the table's metric direction (the lowest perplexity,
    the highest accuracy; `metric_direction`); ties: the first row in table order."""
    out = {}
    for s in table.sparsities:
        best = best_key({row: table.cells[(row, s)][0] for row in table.methods if (row, s) in table.cells},
                        table.metric_key)
        if best is not None:
            out[s] = best
    return out


def to_markdown(table: ResultTable) -> str:
    """A GitHub markdown table: a row per method, a column per sparsity; dense repeats its value in every column.
    With a companion (perplexity), its table follows, and both name their metric's direction and bold each
    column's best sparse cell."""
    marked = table.companion is not None
    lines = _table_lines(table, marked)
    if table.companion is not None:
        lines += ["", *_table_lines(table.companion, marked)]
    seeds = sorted({n for _, _, n in table.cells.values()} | ({table.dense[2]} if table.dense else set()))
    note = f"mean over {'/'.join(map(str, seeds))} seed(s)" + (", ± population std" if seeds[-1] > 1 else "")
    if marked:
        note += "; bold: each column's best sparse row (highest accuracy, lowest perplexity)"
    if table.chance_level is not None:
        note += f"; chance level {table.chance_level:.4f}"
    shared = shared_values(table)
    if shared:
        note += "; every sparse row: " + ", ".join(f"{k}={format_value(v)}" for k, v in shared.items())
    lines += ["", f"_{note}_"]
    against = gaps_markdown(table, {row: display_name(table, row) for row in table.methods})
    return "\n".join(lines) + "\n" + ("\n" + against if against else "")


def _table_lines(table: ResultTable, marked: bool = False) -> list[str]:
    """The heading and rows of one table; `marked`: the heading names the metric's direction and each column's
    best sparse cell is bold (`best_rows`)."""
    sparsities = table.sparsities or [0.0]
    selection = table.selection or f"checkpoints selected on {table.selected_on}"
    direction = f"{direction_words(table.metric_key)}; " if marked else ""
    best = best_rows(table) if marked else {}
    lines = [
        f"### {table.title}: {table.metric_key} ({direction}{table.split} split; {selection})",
        "",
        "| method | " + " | ".join(sparsity_labels(sparsities)) + " |",
        "| --- | " + " | ".join("---:" for _ in sparsities) + " |",
    ]
    for method in table.methods:
        if method == "dense":
            row = [_cell(table.dense)] * len(sparsities)
        else:
            row = [_cell(table.cells.get((method, s)), bold=best.get(s) == method) for s in sparsities]
        lines.append(f"| {display_name(table, method)} | " + " | ".join(row) + " |")
    return lines


def to_csv(records: Sequence[Mapping[str, Any]], path: str, tables: Sequence[ResultTable] = ()) -> str:
    """One row per record: its identity, every metric as a column (union over records, sorted), its gaps to the
    paper for each of `tables` with a panel (`report_reference.GAP_FIELDS`) and provenance."""
    metric_keys = sorted({k for r in records for k in r.get("metrics", {})})
    columns = [*CSV_LEADING, *metric_keys, *gap_columns(tables), *CSV_TRAILING]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, restval="", extrasaction="ignore")
        writer.writeheader()
        for r in records:
            row = {c: r.get(c) for c in (*CSV_LEADING, *CSV_TRAILING)}
            row.update(row=record_row(r), label=row_label(r["method"], record_variant(r)))
            row.update(r.get("metrics", {}))
            row.update(record_gaps(r, tables))
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return path


def collapse_notes(records: Sequence[Mapping[str, Any]]) -> str:
    """A footnote naming the runs whose masks left a layer (almost) empty (the records' `collapsed_layers`,
    `smc_trainer.engine.collapse`); '' when none did. Their cells measure a network cut at that layer."""
    lines = []
    for r in records:
        layers = r.get("collapsed_layers") or []
        if layers:
            named = ", ".join(f"`{c['name']}` ({c['kept']:,} of {c['total']:,} kept)" for c in layers[:3])
            more = f" and {len(layers) - 3} more" if len(layers) > 3 else ""
            method = record_row(r)  # the row, so variants (SNIP + RigL) are told apart as in the table
            run = f"{row_label(row_method(method), record_variant(r))} (`{method}`) at " \
                  f"{100 * float(r['target_sparsity']):.1f}%, seed {r['seed']}"
            lines.append(f"- † {run}: {named}{more}")
    if not lines:
        return ""
    return ("\n† layer collapse: the mask left these layers no weight or under 1% of them, so their cells measure a "
            "cut network (remedies: --prune_exclude, --distribution erk, --prune_heads false)\n\n"
            + "\n".join(lines) + "\n")


# ---- plots ----------------------------------------------------------------------------------------


def table_styles(table: ResultTable) -> dict[str, RowStyle]:
    """Each sparse row's legend label (the paper's words), colour, line style and marker."""
    return row_styles(table.methods, table.variants)


def plot(table: ResultTable, path: str) -> str:
    """Write the table as a PNG in the style of the paper's figures; returns `path`."""
    import matplotlib

    with matplotlib.rc_context(PLOT_STYLE):
        figure(table).savefig(path, dpi=120, bbox_inches="tight")
    return path


def figure(table: ResultTable) -> Any:
    """The table's matplotlib Figure (Agg canvas, no global pyplot state): one line per row, dense, chance; with a
    companion (perplexity), a second panel on its right on the same sparsity axis and row colours."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    xs = list(range(len(table.sparsities) or 1))
    with matplotlib.rc_context(PLOT_STYLE):
        if table.companion is None:
            fig = Figure(figsize=(6.4, 5.0))
            FigureCanvasAgg(fig)
            ax = fig.add_subplot()
            _draw_panel(ax, table, xs, table_styles(table), table.title)
            fig.tight_layout()
            _legend_below(fig, ax)
            return fig
        fig = Figure(figsize=(12.4, 5.0))
        FigureCanvasAgg(fig)
        left, right = fig.subplots(1, 2, sharex=True)
        styles = table_styles(table)  # one style per row for both panels: a row has one colour on the figure
        _draw_panel(left, table, xs, styles, f"{table.title}: {table.metric_key.split('_', 1)[-1]}")
        _draw_panel(right, table.companion, xs, styles, f"{table.title}: {COMPANION_METRIC}")
        fig.tight_layout()
        _legend_below_all(fig, (left, right))
    return fig


def _draw_panel(ax: Any, table: ResultTable, xs: list[int], styles: Mapping[str, RowStyle], title: str) -> None:
    """One panel: dense, a line per row, the chance level and the paper's curves where the table has them;
    perplexity on a log scale with values above `PERPLEXITY_CLIP` drawn at the clip and labelled."""
    log = table.metric_key.endswith(COMPANION_METRIC)
    scale = 100.0 if table.metric_key.endswith("accuracy") else 1.0
    ylabel = "accuracy (%)" if scale == 100.0 else table.metric_key.split("_", 1)[-1]
    clip = PERPLEXITY_CLIP if log else math.inf
    if table.dense is not None:
        ax.plot(xs, [min(table.dense[0] * scale, clip)] * len(xs), color="black", marker="o", lw=2, ms=6,
                label="dense")
    dodges = nm_dodges(table)
    for method, style in styles.items():
        _plot_method(ax, table, method, [x + dodges.get(method, 0.0) for x in xs], scale, style, clip)
    if table.chance_level is not None:
        ax.axhline(table.chance_level * scale, color="grey", ls="--", lw=1.5, label="chance", zorder=1)
    if table.reference:
        plot_reference(ax, table.reference, positions=dict(zip(table.sparsities, xs)), scale=scale, styles=styles)
    if log:
        ax.set_yscale("log")
        ylabel = f"{ylabel} (log scale; {direction_words(table.metric_key)})"
        if _clipped(table):
            ax.axhline(clip, color="grey", ls=":", lw=1.2, label=f"clipped at {clip:.0e}", zorder=1)
    ax.set_xticks(xs, sparsity_labels(table.sparsities) or ["0"], rotation=45)
    ax.set_xlabel("Sparsity", fontsize=13)
    ax.set_ylabel(ylabel, fontsize=13)
    ax.set_title(title, fontsize=14)
    ax.grid(True, color="0.75", lw=0.8)
    ax.set_axisbelow(True)


def _clipped(table: ResultTable) -> bool:
    means = [st[0] for st in table.cells.values()] + ([table.dense[0]] if table.dense else [])
    return any(m > PERPLEXITY_CLIP for m in means)


def nm_dodges(table: ResultTable) -> dict[str, float]:
    """row -> x offset for rows under an N:M pattern that share their sparsity with another such row (2:4 and 4:8
    are both 50%), spread `DODGE` apart so neither hides the other; other rows stay on their category."""
    by_sparsity: dict[float, list[str]] = {}
    for row in table.methods:
        pattern = table.variants.get(row, {}).get("sparsity_pattern")
        if row != "dense" and pattern is not None and pattern != "unstructured":
            by_sparsity.setdefault(round(parse_pattern(pattern).sparsity, 6), []).append(row)
    return {row: (i - (len(rows) - 1) / 2) * DODGE
            for rows in by_sparsity.values() if len(rows) > 1 for i, row in enumerate(rows)}


def _legend_below(fig: Any, ax: Any) -> None:
    """The legend in columns under the axes' x label, as in the paper; savefig's tight bbox makes room for it."""
    bottom = ax.get_tightbbox(fig.canvas.get_renderer()).y0
    y = ax.transAxes.inverted().transform((0.0, bottom))[1]
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, y - 0.02), ncol=3, frameon=False, fontsize=10)


def _legend_below_all(fig: Any, axes: Sequence[Any]) -> None:
    """One legend for several panels (each label once: the rows are styled alike in all), under their x labels."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    renderer = fig.canvas.get_renderer()
    bottom = min(ax.get_tightbbox(renderer).y0 for ax in axes)
    y = fig.transFigure.inverted().transform((0.0, bottom))[1]
    fig.legend(list(handles.values()), list(handles), loc="upper center", bbox_to_anchor=(0.5, y - 0.01), ncol=4,
               frameon=False, fontsize=10)


def _plot_method(ax: Any, table: ResultTable, method: str, xs: list[float], scale: float, style: RowStyle,
                 clip: float = math.inf) -> None:
    """One row's line through the cells it has (so a row run at fewer sparsities than the table's LTH rounds
    still reads as a line, like the paper's), with a faint ±std band where there are several seeds. Values above
    `clip` are drawn at it, as an upward triangle labelled with the value."""
    color = style.color
    placed = [(x, st) for x, s in zip(xs, table.sparsities) if (st := table.cells.get((method, s)))]
    at = [x for x, _ in placed]
    ax.plot(at, [min(st[0] * scale, clip) for _, st in placed], color=color, ls=style.linestyle,
            marker=style.marker, lw=2, ms=6, label=style.label, zorder=3)
    if any(st[2] > 1 for _, st in placed):
        low = [min((st[0] - st[1]) * scale, clip) for _, st in placed]
        if clip != math.inf:  # a log axis: the band stays above zero
            low = [max(v, 1e-3 * min(st[0] * scale, clip)) for v, (_, st) in zip(low, placed)]
        ax.fill_between(at, low, [min((st[0] + st[1]) * scale, clip) for _, st in placed], color=color,
                        alpha=0.15, lw=0, zorder=2)
    for x, st in placed:
        if st[0] * scale > clip:
            ax.plot([x], [clip], marker="^", ms=10, color=color, mec="black", zorder=4)
            ax.annotate(f"{st[0] * scale:.1e}", (x, clip), textcoords="offset points", xytext=(0, 7), ha="center",
                        fontsize=8, color=color)


# ---- the report -----------------------------------------------------------------------------------


def _file_name(recipe: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", recipe) or "recipe"


def write_report(ledger_path: str, out_dir: str, split: str = "auto", reference: str = "auto") -> dict[str, list[str]]:
    """results.md, results.csv, <recipe>.png (<recipe>-<subset>.png per subset) and <recipe>-density.png (per-layer
    density, for recipes whose records carry per-layer counts) in `out_dir` from the ledger; returns the paths by
    kind ("markdown", "csv", "png", "density"). `reference` (auto, smc-bench, none: `report_reference`) says
    whether the paper's curves and the gaps to them are in the tables and plots."""
    check_reference(reference)
    records = Ledger(ledger_path).records()
    if not records:
        where = "is empty" if os.path.exists(ledger_path) else "does not exist"
        raise UsageError(f"ledger {ledger_path} has no records (the file {where}); run a sweep first")
    tables = [with_reference(t, reference) for t in summarize(records, split=split)]
    os.makedirs(out_dir, exist_ok=True)
    pngs = [plot(t, os.path.join(out_dir, f"{_file_name(t.stem)}.png")) for t in tables]
    densities = write_density_plots(records, tables, out_dir)
    markdown = os.path.join(out_dir, "results.md")
    with open(markdown, "w", encoding="utf-8") as fh:
        fh.write(f"# Results\n\nFrom `{ledger_path}` ({len(records)} runs).\n\n")
        fh.write("\n".join(to_markdown(t) + collapse_notes([within_panel(r) for r in records if t.holds(r)])
                           + _plot_links(t, densities) for t in tables))
    return {"markdown": [markdown], "csv": [to_csv(records, os.path.join(out_dir, "results.csv"), tables)], "png": pngs,
            "density": list(densities.values())}


def write_density_plots(records: Sequence[Mapping[str, Any]], tables: Sequence[ResultTable], out_dir: str
                        ) -> dict[str, str]:
    """<recipe>-density.png per recipe and model panel with per-layer counts (<recipe>-<model>-density.png), rows
    styled as in its first table; returns its name (`_density_name`) -> path."""
    paths = {}
    for table in tables:
        name = _density_name(table)
        if name in paths:
            continue
        density = density_table(table.recipe, [within_panel(r) for r in records if table.holds(r)], table.methods)
        if density is None:
            logger.info(f"{table.recipe}: no record carries per-layer counts; no density plot")
            continue
        styles = row_styles([*table.methods, *density.rows], table.variants)
        paths[name] = plot_density(density, styles, os.path.join(out_dir, f"{_file_name(name)}-density.png"))
    return paths


def _density_name(table: ResultTable) -> str:
    """Subsets share their recipe's weights, so one density plot per recipe and model."""
    return "-".join(q for q in (table.recipe, table.model) if q)


def _plot_links(table: ResultTable, densities: Mapping[str, str]) -> str:
    links = [f"plot: [{_file_name(table.stem)}.png]({_file_name(table.stem)}.png)"]
    if _density_name(table) in densities:
        name = os.path.basename(densities[_density_name(table)])
        links.append(f"per-layer density (where each row kept its weights): [{name}]({name})")
    return "\n" + "; ".join(links) + "\n"
