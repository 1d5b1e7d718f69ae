"""The committed docs tell the truth about this repository, not about one machine: BENCHMARKS.md stays a dashboard
(at most 300 lines) that names every benchmark script, and no doc carries a machine path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_BENCHMARK_LINES = 300
MACHINE_PATH = re.compile(r"/(?:work|root|tmp)/")
TEXT_SUFFIXES = {".md", ".csv", ".jsonl", ".json", ".txt", ".yaml", ".yml", ".rst", ".html", ".tsv"}


def _text_docs() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "BENCHMARKS.md"]
    files += sorted(p for p in (ROOT / "docs").rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    return files


def test_benchmarks_md_is_a_dashboard():
    lines = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_BENCHMARK_LINES, (
        f"BENCHMARKS.md has {len(lines)} lines (at most {MAX_BENCHMARK_LINES}): keep today's figures only; "
        "run history lives in git and CHANGELOG.md")


def test_every_benchmark_script_is_named_in_benchmarks_md():
    text = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    scripts = sorted(p.name for p in (ROOT / "benchmarks").glob("bench_*.py"))
    assert scripts, "no benchmarks/bench_*.py found"
    missing = [name for name in scripts if f"benchmarks/{name}" not in text]
    assert not missing, f"BENCHMARKS.md does not name {missing}"


def test_the_doc_walk_sees_the_committed_results():
    names = {p.relative_to(ROOT).as_posix() for p in _text_docs()}
    assert {"README.md", "BENCHMARKS.md", "docs/results/asdiv_a/ledger.jsonl",
            "docs/results/asdiv_a/results.csv"} <= names


@pytest.mark.parametrize("path", _text_docs(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_machine_paths_in_docs(path: Path):
    hits = [f"{path.relative_to(ROOT).as_posix()}:{number}: {line.strip()[:120]}"
            for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
            if MACHINE_PATH.search(line)]
    assert not hits, "machine paths (/work/, /root/, /tmp/) in the docs:\n" + "\n".join(hits[:10])
