"""docs/flags.md and docs/methods.md are generated from the code; a stale committed copy fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from smc_trainer.reference_docs import DOCS

DOCS_DIR = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize("name", sorted(DOCS))
def test_committed_doc_is_what_the_code_generates(name):
    committed = (DOCS_DIR / name).read_text(encoding="utf-8")
    assert committed == DOCS[name](), f"docs/{name} is stale: run `python -m smc_trainer.reference_docs`"


def test_the_docs_name_what_the_registries_and_configs_hold():
    from smc_trainer.methods import METHODS
    from smc_trainer.runs.presets import preset_names

    flags, methods = DOCS["flags.md"](), DOCS["methods.md"]()
    assert "`owl`" in flags and "`--gmp_window_per_halving`" in flags and "ValueError" not in flags
    assert "--imp_round" not in flags and "--method_preset" not in flags  # internal state, not flags
    built_in = [name for name, cls in METHODS.items() if cls.__module__.startswith("smc_trainer.")]
    assert len(built_in) >= 15  # (plugins loaded by other tests document themselves)
    for name in [*built_in, *preset_names()]:
        assert f"| `{name}` |" in methods
