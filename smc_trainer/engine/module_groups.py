"""Named groups of transformer-layer linears, for pruning only some module kinds (the paper's Table 1).

A group name combines the module kinds of a BERT-family layer (Hugging Face naming, shared by
BERT, RoBERTa and ESM): `q`, `k`, `v` (attention query/key/value), `o` (attention output
projection) and `ffn` (the feed-forward `intermediate.dense` and `output.dense`). Letters may be
run together and parts joined by `_`: `qkvo_ffn`, `qkv`, `qk`, `qv`, `kv`, `o_ffn`, `ffn`.
`--prune_modules qkv` turns a group into a parameter-name regex that restricts the prunable set.
"""

from __future__ import annotations

import re

from smc_trainer.errors import UsageError

MODULE_PATTERNS: dict[str, str] = {
    "q": r"attention\.self\.query",
    "k": r"attention\.self\.key",
    "v": r"attention\.self\.value",
    "o": r"attention\.output\.dense",
    "ffn": r"intermediate\.dense|output\.dense",
}
KIND_ORDER = ("q", "k", "v", "o", "ffn")
TABLE1_GROUPS = ("qkvo_ffn", "qkv", "qk", "qv", "kv")
"""The module groups of the paper's Table 1 (ESM-1B on HP-S2C2, OMP (After) at 5% sparsity)."""
TABLE1_PRESET = "table1"
"""`--module_groups table1` in a sweep means all of TABLE1_GROUPS."""


def parse_module_group(group: str, flag: str = "prune_modules") -> tuple[str, ...]:
    """The module kinds named by `group` ("qkvo_ffn" -> ("q", "k", "v", "o", "ffn")), in canonical order."""
    kinds: set[str] = set()
    parts = group.strip().lower().split("_")
    for part in parts:
        if part == "ffn":
            kinds.add("ffn")
        elif part and all(ch in "qkvo" for ch in part):
            kinds.update(part)
        else:
            raise UsageError(f"--{flag} must combine the module kinds {', '.join(KIND_ORDER)} (letters q, k, v, o "
                             f"run together, parts joined by '_', e.g. {', '.join(TABLE1_GROUPS)}); got {group!r}")
    return tuple(k for k in KIND_ORDER if k in kinds)


def module_group_regex(group: str, flag: str = "prune_modules") -> str:
    """A regex (for `re.search` on parameter names) matching exactly the weights of the group's linears.

    Anchored at `layer.<i>.`, so `output.dense` (FFN) never matches `attention.output.dense` (O).
    """
    alternatives = "|".join(MODULE_PATTERNS[k] for k in parse_module_group(group, flag))
    return rf"(?:^|\.)layer\.\d+\.(?:{alternatives})\.weight$"


def matches_group(name: str, group: str) -> bool:
    """True if parameter `name` is a weight of one of `group`'s linears."""
    return re.search(module_group_regex(group), name) is not None
