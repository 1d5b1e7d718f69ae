"""scripts/gpu_check.py on CPU: the rows a CPU can run pass, the GPU-only rows are skipped with their reason, one
table is printed, and the exit status says whether any row failed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
EXPECTED = {  # row -> (status, number) on CPU at --small sizes
    "amp bf16": ("pass", "0 pruned non-zeros"),
    "amp fp16": ("skip", "-"),
    "2:4 speed": ("skip", "-"),
    "fsdp2 masks": ("pass", "0 mask entries differ"),
    "fsdp2 accelerate": ("skip", "-"),
    "fsdp2 trainer": ("skip", "-"),
    "sparsegpt small widths": ("pass", None),
}


def _script(monkeypatch):
    """The script as a module (registered while the test runs: its dataclass needs it in sys.modules)."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)
    spec.loader.exec_module(module)
    return module


def test_cpu_self_test_prints_one_table_and_exits_zero(tmp_path):
    out = tmp_path / "rows.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--small", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["row"] for r in rows] == list(EXPECTED)
    for r in rows:
        status, number = EXPECTED[r["row"]]
        assert r["status"] == status, r
        assert number is None or r["number"] == number, r
    by_row = {r["row"]: r for r in rows}
    assert "only on GPUs" in by_row["amp fp16"]["note"] and "CUDA" in by_row["2:4 speed"]["note"]
    assert "weights DTensor: True" in by_row["fsdp2 masks"]["note"]
    assert "one dense AdamW step ran" in by_row["fsdp2 accelerate"]["note"]
    assert by_row["sparsegpt small widths"]["number"].endswith(" s") and "peak RSS" in by_row[
        "sparsegpt small widths"]["note"]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert table[0] == "| row | status | number | note |" and len(table) == 2 + len(EXPECTED)  # the only table
    for r in rows:
        assert f"| {r['row']} | {r['status']} | {r['number']} |" in done.stdout


def test_a_failing_row_makes_the_exit_status_nonzero(monkeypatch, capsys):
    gpu_check = _script(monkeypatch)
    rows = [gpu_check.Row("a", "pass", "1", ""), gpu_check.Row("b", "fail", "-", "ValueError: x")]
    monkeypatch.setattr(gpu_check, "run_rows", lambda device, small: rows)
    assert gpu_check.main(["--device", "cpu"]) == 1
    assert "| b | fail | - | ValueError: x |" in capsys.readouterr().out
    monkeypatch.setattr(gpu_check, "run_rows", lambda device, small: rows[:1])
    assert gpu_check.main(["--device", "cpu"]) == 0


def test_a_crashing_row_fails_with_its_reason_and_the_others_still_run(monkeypatch):
    gpu_check = _script(monkeypatch)

    def boom(*args):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(gpu_check, "amp_row", boom)
    monkeypatch.setattr(gpu_check, "fsdp2_row", lambda device: gpu_check.Row("fsdp2 masks", "pass", "0", ""))
    monkeypatch.setattr(gpu_check, "fsdp2_accelerate_row", lambda device: gpu_check.Row("x", "skip", "-", ""))
    monkeypatch.setattr(gpu_check, "sparsegpt_row", lambda device, small: gpu_check.Row("sparsegpt", "pass", "0", ""))
    rows = gpu_check.run_rows("cpu", small=True)
    assert [(r.row, r.status) for r in rows][:2] == [("amp bf16", "fail"), ("amp fp16", "fail")]
    assert rows[0].note == "RuntimeError: no kernel" and len(rows) == 7


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused_with_the_cpu_alternative(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 2 and "--device cuda needs a CUDA GPU" in done.stderr and "--device cpu" in done.stderr
