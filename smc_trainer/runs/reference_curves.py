"""The paper's published curves (SMC-Bench, ICLR 2023) as package data, for reports to draw beside a user's rows.

`runs/data/smc_bench_reference.yaml` holds every number of the reference notes' section 5 (and the dense
baselines and chance levels of section 2) in the paper's scale: accuracy in percent, BLEU in BLEU points.
This module converts on loading to the ledgers' scale, so callers compare like with like: **accuracy as a
fraction (0-1)**, BLEU as BLEU points (0-100, as `corpus_bleu` logs it). Each point says where it comes from
(`source`) and how sure it is (`confidence`: "exact", or "figure, about 1 point" for numbers read by eye);
where the paper gives a range ("≈19–21") `value` is its midpoint and `low`/`high` its ends.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

from smc_trainer.errors import UsageError
from smc_trainer.runs.metric_direction import best_key

DATA_FILE = "smc_bench_reference.yaml"
CONFIDENCES = ("exact", "figure, about 1 point")
PAPER_GRID = tuple(round(1.0 - 0.8**k, 6) for k in range(1, 11))
"""The paper's sparsities, exactly (the paper prints 0.8325 for 0.832228); Table 1 adds 0.05."""
TABLE1_SPARSITY = 0.05
SPARSITY_TOLERANCE = 1e-3  # the printed grid (0.791) is within 7e-4 of the exact one (0.790285)
SCALES = {"accuracy": 100.0, "bleu": 1.0}
"""The file's value per ledger unit, by metric: accuracy is printed in percent, stored in ledgers as a fraction."""

# recipe -> (the paper's dataset keys, its model for the recipe's row); recipes run one model per dataset
RECIPE_DATASETS: dict[str, tuple[tuple[str, ...], str]] = {
    "csqa": (("csqa",), "roberta-large"),
    "winogrande": (("winogrande",), "roberta-large"),
    "race": (("race_middle", "race_high"), "roberta-large"),
    "mawps": (("mawps",), "gts"),
    "asdiv_a": (("asdiv_a",), "gts"),
    "svamp": (("svamp",), "gts"),
    "hp_s": (("hp_s",), "esm-1b"),
    "hp_s2c2": (("hp_s2c2",), "esm-1b"),
    "hp_s2c5": (("hp_s2c5",), "esm-if1"),  # our recipe substitutes ESM-1b for the paper's ESM-IF1
    "meltome": (("meltome",), "esm-1b"),
    "mt_2to2": (("mt_2to2",), "mbart"),
    "mt_5to5": (("mt_5to5",), "mbart"),
    "mt_10to10": (("mt_10to10",), "mbart"),
}


@dataclass(frozen=True)
class ReferencePoint:
    """One published number, in the ledgers' scale (accuracy 0-1, BLEU 0-100). `method` is the row id our ledger
    gives the same run (`rigl` = OMP+RigL, `rigl:init_method=snip`, `dense`; protein rows carry the recipes'
    `prune_modules=qkvo_ffn`); `low`/`high` are set where the paper gives a range."""

    model: str
    dataset: str
    method: str
    sparsity: float
    value: float
    low: float | None
    high: float | None
    source: str
    confidence: str
    metric: str = "accuracy"
    note: str = ""

    @property
    def is_range(self) -> bool:
        return self.low is not None


@dataclass(frozen=True)
class ReferencePanel:
    """One (model, dataset) panel of the paper: its points, dense baseline and chance level (ledger scale).
    `scope` is the --prune_modules group the paper pruned (protein: qkvo_ffn, part of its rows' ids), else None."""

    model: str
    dataset: str
    metric: str
    source: str
    points: tuple[ReferencePoint, ...]
    dense: ReferencePoint | None = None
    chance: float | None = None
    scope: str | None = None


@dataclass(frozen=True)
class Gap:
    """Our value at (row, sparsity) against the paper's: its best method there, its dense, and the same row.
    Each `to_*` is ours minus the paper's (ledger scale; negative: below the paper); None where it has no number."""

    row: str
    sparsity: float
    value: float
    best_method: str | None
    best_value: float | None
    to_best: float | None
    dense_value: float | None
    to_dense: float | None
    paper_value: float | None
    to_paper: float | None


# ---- loading ---------------------------------------------------------------------------------------


def data_text() -> str:
    """The package data file's text (read through importlib.resources, so it works from a wheel)."""
    return (resources.files("smc_trainer.runs") / "data" / DATA_FILE).read_text(encoding="utf-8")


@cache
def load_reference() -> tuple[ReferencePanel, ...]:
    """Every panel of the data file, converted to the ledgers' scale (cached)."""
    data = yaml.safe_load(data_text())
    grid = [float(s) for s in data["grid"]]
    return tuple(_panel(entry, grid) for entry in data["panels"])


def _panel(entry: Mapping[str, Any], grid: Sequence[float]) -> ReferencePanel:
    metric = entry["metric"]
    scale = SCALES[metric]
    base = {"model": entry["model"], "dataset": entry["dataset"], "metric": metric}
    points = []
    for row, spec in entry["series"].items():
        method = _scoped(row, entry.get("scope"))
        spec = spec if isinstance(spec, Mapping) and "values" in spec else {"values": spec}
        source = spec.get("source", entry["source"])
        confidence = spec.get("confidence", entry["confidence"])
        for sparsity, raw in _series_values(spec["values"], grid):
            points.append(_point(base, method, sparsity, raw, scale, source, confidence, spec.get("note", "")))
    dense = entry.get("dense")
    chance = entry.get("chance")
    return ReferencePanel(
        model=entry["model"], dataset=entry["dataset"], metric=metric, source=entry["source"], points=tuple(points),
        dense=None if dense is None else _point(base, "dense", 0.0, dense["value"], scale, dense["source"],
                                                dense["confidence"], dense.get("note", "")),
        chance=None if chance is None else _scaled(chance["value"], scale), scope=entry.get("scope"))


def _scoped(row: str, scope: str | None) -> str:
    """The row id our ledger writes for the paper's row: a recipe that prunes only `scope` (protein: qkvo_ffn)
    records it as a variant, `omp_after:prune_modules=qkvo_ffn`; a row naming its own group keeps it."""
    if scope is None:
        return row
    from smc_trainer.runs.variants import parse_method_spec, row_id

    spec = parse_method_spec(row)
    return row_id(spec.method, {"prune_modules": scope, **dict(spec.variant)})


def _series_values(values: Any, grid: Sequence[float]) -> Iterable[tuple[float, Any]]:
    """(exact sparsity, raw value) pairs of a series given as a list over the grid or a {sparsity: value} map."""
    pairs = zip(grid, values) if isinstance(values, list) else ((float(s), v) for s, v in values.items())
    return ((_exact_sparsity(s), v) for s, v in pairs if v is not None)


def _exact_sparsity(printed: float) -> float:
    """The exact grid value (1 - 0.8^k) for a printed one, or the printed value off the grid (Table 1's 5%)."""
    return next((s for s in PAPER_GRID if abs(s - printed) <= SPARSITY_TOLERANCE), round(printed, 6))


def _point(base: Mapping[str, str], method: str, sparsity: float, raw: Any, scale: float, source: str,
           confidence: str, note: str) -> ReferencePoint:
    low, high = (_scaled(raw[0], scale), _scaled(raw[1], scale)) if isinstance(raw, list) else (None, None)
    value = _scaled((raw[0] + raw[1]) / 2, scale) if low is not None else _scaled(raw, scale)
    return ReferencePoint(base["model"], base["dataset"], method, sparsity, value, low, high, source, confidence,
                          base["metric"], note)


def _scaled(printed: float, scale: float) -> float:
    """A printed value in the ledgers' scale, rounded so that 88.49 reads 0.8849 (not 0.8848999999999999)."""
    return round(float(printed) / scale, 10)


# ---- queries by recipe -----------------------------------------------------------------------------


def _dataset_keys(recipe: str, subset: str | None) -> tuple[tuple[str, ...], str]:
    """The paper's dataset keys for a recipe ("race", "race-middle" or recipe + subset) and its default model."""
    name = recipe.replace("-", "_")
    if name not in RECIPE_DATASETS and "_" in name:
        name, _, subset = name.rpartition("_")  # "race_middle" -> ("race", "middle")
    if name not in RECIPE_DATASETS:
        raise UsageError(f"recipe must be one of {', '.join(RECIPE_DATASETS)} for the paper's numbers; got {recipe!r}")
    datasets, model = RECIPE_DATASETS[name]
    if subset:
        datasets = tuple(d for d in datasets if d == f"{name}_{subset}")
        if not datasets:
            subsets = [d.removeprefix(f"{name}_") for d in RECIPE_DATASETS[name][0] if d != name]
            raise UsageError(f"subset of {name} must be one of {', '.join(subsets) or '(none: it has no subsets)'}; "
                             f"got {subset!r}")
    return datasets, model


def panels_for(recipe: str, model: str | None = None, subset: str | None = None) -> list[ReferencePanel]:
    """The paper's panels for a recipe (RACE: both levels unless `subset` or "race-middle" picks one); `model`
    defaults to the one the paper runs for the recipe's row (arithmetic: gts; pass "graph2tree", or "tape" for hp_s)."""
    datasets, default = _dataset_keys(recipe, subset)
    model = model or default
    found = [p for p in load_reference() if p.dataset in datasets and p.model == model]
    if not found:
        models = sorted({p.model for p in load_reference() if p.dataset in datasets})
        raise UsageError(f"model for {recipe} must be one of {', '.join(models)}; got {model!r}")
    return found


def reference_for(recipe: str, model: str | None = None, subset: str | None = None) -> list[ReferencePoint]:
    """The paper's points for a recipe (ledger scale), dense baseline included (method "dense", sparsity 0)."""
    return [pt for panel in panels_for(recipe, model, subset)
            for pt in ((panel.dense,) if panel.dense else ()) + panel.points]


def _one_panel(recipe: str, model: str | None, subset: str | None) -> ReferencePanel:
    panels = panels_for(recipe, model, subset)
    if len(panels) > 1:
        raise UsageError(f"{recipe} has {len(panels)} panels in the paper ({', '.join(p.dataset for p in panels)}); "
                         f"pass subset")
    return panels[0]


def paper_dense(recipe: str, sparsity: float | None = None, model: str | None = None,
                subset: str | None = None) -> float | None:
    """The paper's dense baseline (ledger scale). It is one number per panel: `sparsity` does not change it, and
    is accepted so callers can ask "dense at this sparsity" alike for every cell."""
    dense = _one_panel(recipe, model, subset).dense
    return None if dense is None else dense.value


def paper_chance(recipe: str, model: str | None = None, subset: str | None = None) -> float | None:
    """The chance level the paper states (commonsense only), ledger scale; None where it states none."""
    return _one_panel(recipe, model, subset).chance


def _at(points: Iterable[ReferencePoint], sparsity: float) -> list[ReferencePoint]:
    return [pt for pt in points if pt.method != "dense" and abs(pt.sparsity - sparsity) <= SPARSITY_TOLERANCE]


def _best(points: Sequence[ReferencePoint]) -> ReferencePoint | None:
    """The best of `points` by their metric's direction (`metric_direction`: the highest accuracy or BLEU, the
    lowest perplexity; a range by its midpoint; ties: the first, the paper's order); None if empty."""
    if not points:
        return None
    index = best_key({i: pt.value for i, pt in enumerate(points)}, points[0].metric)
    return points[index]


def paper_best(recipe: str, sparsity: float, model: str | None = None,
               subset: str | None = None) -> tuple[str, float] | None:
    """(method, value) of the paper's best method at `sparsity` (ledger scale; a range by its midpoint); None where
    the paper has no number there. Ties go to the method listed first in the data (the paper's order)."""
    best = _best(_at(_one_panel(recipe, model, subset).points, sparsity))
    return None if best is None else (best.method, best.value)


def gaps(recipe: str, model: str | None, rows: Iterable[tuple[str, float, float]],
         subset: str | None = None) -> list[Gap]:
    """For each (row, sparsity, our value) in the ledger's scale: the gap to the paper's best method and to its
    dense at that sparsity, and to the paper's own value for the same row (None where the paper has no number)."""
    panel = _one_panel(recipe, model, subset)
    dense = panel.dense.value if panel.dense else None
    out = []
    for row, sparsity, value in rows:
        here = _at(panel.points, sparsity)
        best = _best(here)
        same = next((pt.value for pt in here if pt.method == row), None)
        out.append(Gap(row, sparsity, value, best.method if best else None, best.value if best else None,
                       _minus(value, best.value if best else None), dense, _minus(value, dense), same,
                       _minus(value, same)))
    return out


def _minus(ours: float, theirs: float | None) -> float | None:
    return None if theirs is None or math.isnan(ours) else ours - theirs


# ---- plotting --------------------------------------------------------------------------------------


def plot_reference(ax: Any, points: Iterable[ReferencePoint], positions: Mapping[float, float] | None = None,
                   scale: float = 1.0, styles: Mapping[str, Any] | None = None, dense: bool = True) -> list[Any]:
    """Draw the paper's points on `ax` as one dashed line per method, labelled "paper: <label>", with a vertical
    bar where the paper gives a range, and its dense baseline as a dashed black line. `positions` maps sparsity
    to x (the report's categorical axis; points at other sparsities are left out; default: x = sparsity);
    `scale` multiplies values (100 for percent, as the report draws accuracy); `styles` (row -> RowStyle, as
    report_style.row_styles gives; default: computed from these rows) gives colours and labels. Returns the lines."""
    points = list(points)
    sparse = [pt for pt in points if pt.method != "dense"]
    methods = list(dict.fromkeys(pt.method for pt in sparse))
    own = reference_styles(methods)
    styles = {**own, **(styles or {})}
    lines = []
    for method in methods:
        placed = sorted(((x, pt) for pt in sparse if pt.method == method
                         and (x := _x_of(pt.sparsity, positions)) is not None), key=lambda item: item[0])
        if not placed:
            continue
        style = styles[method]
        xs = [x for x, _ in placed]
        (line,) = ax.plot(xs, [pt.value * scale for _, pt in placed], color=style.color, ls="--", lw=1.2,
                          marker=style.marker, ms=3, alpha=0.8, label=f"paper: {style.label}", zorder=2)
        lines.append(line)
        ranged = [(x, pt) for x, pt in placed if pt.is_range]
        if ranged:
            ax.vlines([x for x, _ in ranged], [pt.low * scale for _, pt in ranged],
                      [pt.high * scale for _, pt in ranged], colors=style.color, lw=1.0, alpha=0.5, zorder=2)
    base = next((pt for pt in points if pt.method == "dense"), None)
    if dense and base is not None:
        lines.append(ax.axhline(base.value * scale, color="black", ls="--", lw=1.2, alpha=0.6,
                                label="paper: dense", zorder=1))
    return lines


def reference_styles(rows: Sequence[str]) -> dict[str, Any]:
    """report_style's RowStyle per row id, labels from the ids' variants ("SNIP + RigL", "OMP (After) [qk]")."""
    from smc_trainer.runs.report_style import row_styles
    from smc_trainer.runs.variants import parse_method_spec

    return row_styles(rows, {row: dict(parse_method_spec(row).variant) for row in rows})


def _x_of(sparsity: float, positions: Mapping[float, float] | None) -> float | None:
    if positions is None:
        return sparsity
    return next((x for s, x in positions.items() if abs(s - sparsity) <= SPARSITY_TOLERANCE), None)
