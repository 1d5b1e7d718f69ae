"""Layer collapse: a prunable layer left with (almost) no weights by a mask.

The paper's name for it (SMC-Bench App. C.1): one global threshold can empty a whole layer whose
weights are small (MiniLM's pretrained pooler, a freshly initialized head, SNIP's embeddings), and
then no signal crosses that layer: the run trains at chance without an error. The check is a pure
function over per-layer counts, so it runs on a `MaskSet`, a sparsity report or a ledger record
alike.

A layer is collapsed when it keeps no weight, or fewer than `COLLAPSE_FLOOR` (1%) of its weights
while the whole prunable set keeps at least ten times that share. The second condition keeps a very
sparse but even mask (uniform 99.5%) from being flagged: there every layer is as thin as the model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from smc_trainer.errors import UsageError

if TYPE_CHECKING:
    from smc_trainer.engine.masks import MaskSet

COLLAPSE_FLOOR = 0.01
"""A layer keeping a smaller share of its weights than this (and 10x less than the whole set) is collapsed."""
COLLAPSE_POLICIES = ("warn", "error")


class LayerCollapseError(UsageError):
    """A mask left a prunable layer (almost) empty and `--on_layer_collapse error` was asked for."""


@dataclass(frozen=True)
class CollapsedLayer:
    """One collapsed prunable weight: its name, its report group and how many of its weights the mask keeps."""

    name: str
    group: str
    kept: int
    total: int

    def describe(self) -> str:
        return f"{self.name} keeps {self.kept:,} of {self.total:,}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def collapse_floor(overall_density: float) -> float:
    """The kept share under which a layer counts as collapsed, for a mask keeping `overall_density` overall."""
    return min(COLLAPSE_FLOOR, overall_density / 10.0)


def find_collapsed(layers: Iterable[Mapping[str, Any]]) -> list[CollapsedLayer]:
    """The collapsed layers among per-layer rows with `name`, `total`, `kept` (and `group`), in their order.

    Rows of a sparsity report (`MaskSet.layer_report`) or of a ledger record (`layers`) both qualify."""
    rows = [r for r in layers if int(r["total"]) > 0]
    total = sum(int(r["total"]) for r in rows)
    kept = sum(int(r["kept"]) for r in rows)
    if total == 0 or kept == total:
        return []
    floor = collapse_floor(kept / total)
    return [CollapsedLayer(str(r["name"]), str(r.get("group", "")), int(r["kept"]), int(r["total"]))
            for r in rows if int(r["kept"]) == 0 or int(r["kept"]) / int(r["total"]) < floor]


@torch.no_grad()
def collapsed_layers(masks: MaskSet) -> list[CollapsedLayer]:
    """The collapsed layers of the masks a `MaskSet` holds (none while it is dense)."""
    if not masks.active:
        return []
    return find_collapsed({"name": t.name, "group": t.group, "total": t.numel,
                           "kept": int(torch.count_nonzero(masks.masks[t.name]))} for t in masks.targets)


def exclude_regex(collapsed: Sequence[CollapsedLayer]) -> str:
    """A `--prune_exclude` regex that keeps exactly the modules of these weights dense."""
    modules = dict.fromkeys(re.escape(c.name.rsplit(".", 1)[0] if "." in c.name else c.name) for c in collapsed)
    return "|".join(modules)


def collapse_message(collapsed: Sequence[CollapsedLayer], where: str) -> str:
    """What collapsed, where, why it matters and the remedies, in one message."""
    names = "; ".join(c.describe() for c in collapsed)
    return (f"layer collapse {where}: {len(collapsed)} prunable layer(s) keep no weight or under "
            f"{COLLAPSE_FLOOR:.0%} of them: {names}. No signal crosses an emptied layer, so the run may train at "
            f"chance. Remedies: keep those weights dense (--prune_exclude '{exclude_regex(collapsed)}'), spread the "
            "budget per layer (--distribution erk or uniform), or keep the task head dense (--prune_heads false). "
            "--on_layer_collapse error stops such runs.")


def check_policy(policy: str) -> None:
    """Refuse an unknown --on_layer_collapse value with the valid choices."""
    if policy not in COLLAPSE_POLICIES:
        raise UsageError(f"--on_layer_collapse must be one of {', '.join(COLLAPSE_POLICIES)}; got {policy!r}")
