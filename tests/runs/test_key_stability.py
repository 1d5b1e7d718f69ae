"""Ledger, run and dense-cache keys of every pinned configuration stay byte-identical (existing ledgers and dense
caches keep working). The recording was made before the flags' roles moved to their declarations."""

from __future__ import annotations

import json

from tests.runs.key_cases import RECORDING, record


def test_every_recorded_key_is_unchanged():
    recorded = json.loads(RECORDING.read_text(encoding="utf-8"))
    now = record()
    assert sorted(now) == sorted(recorded), "the set of pinned cases changed: a recipe, method or preset moved"
    changed = {name: (recorded[name], keys) for name, keys in now.items() if keys != recorded[name]}
    assert not changed, f"{len(changed)} of {len(now)} cases changed keys, e.g. {next(iter(changed.items()))}"
