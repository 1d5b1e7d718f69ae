"""A user's mistake ends run_smc.py with one `run_smc.py: error: ...` line and exit status 2; a bug keeps its
traceback; --debug / SMC_DEBUG=1 shows the traceback of a user error too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import run_smc
import smc_trainer.cli
from smc_trainer.errors import MissingFileError, OfflineError, UsageError

ROOT = Path(__file__).resolve().parents[2]


def _cli_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_smc.cli(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("run_smc.py: error: "), err
    return err[-1]


@pytest.mark.parametrize("argv, expected", [
    (["--recipe", "no_such_recipe"], "no_such_recipe"),
    (["--recipe", "quickstart", "--sparse_method", "prune_everything"], "prune_everything"),
    (["--recipe", "quickstart", "--sparsity", "1.5"], "1.5"),
    (["missing_config.yaml"], "missing_config.yaml"),
    (["report", "no/such/ledger.jsonl"], "no/such/ledger.jsonl"),
])
def test_user_mistakes_are_one_line(capsys, tmp_path, monkeypatch, argv, expected):
    monkeypatch.chdir(tmp_path)
    line = _cli_error(capsys, argv)
    assert expected in line
    assert "Traceback" not in capsys.readouterr().err


def test_offline_model_is_a_user_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = _cli_error(capsys, ["--recipe", "quickstart", "--model_name_or_path", "nobody/not-a-cached-model",
                               "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--report_to", "none",
                               "--dense_cache_dir", str(tmp_path / "cache"), "--use_cpu"])
    assert "nobody/not-a-cached-model" in line


def test_debug_shows_the_traceback(monkeypatch):
    with pytest.raises(UsageError, match="no_such_recipe"):
        run_smc.cli(["--recipe", "no_such_recipe", "--debug"])
    monkeypatch.setenv("SMC_DEBUG", "1")
    with pytest.raises(UsageError, match="no_such_recipe"):
        run_smc.cli(["--recipe", "no_such_recipe"])


def test_bugs_still_raise(monkeypatch):
    def broken(argv):
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(smc_trainer.cli, "main", broken)
    with pytest.raises(RuntimeError, match="a bug of ours"):
        run_smc.cli(["--recipe", "quickstart"])


def test_user_error_kinds_keep_their_builtin_bases():
    assert issubclass(UsageError, ValueError)
    assert issubclass(MissingFileError, FileNotFoundError) and issubclass(MissingFileError, UsageError)
    assert issubclass(OfflineError, OSError) and issubclass(OfflineError, UsageError)


def test_the_script_itself_exits_2_without_a_traceback():
    out = subprocess.run([sys.executable, str(ROOT / "run_smc.py"), "--recipe", "no_such_recipe"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("run_smc.py: error: ")
    assert "Traceback" not in out.stderr
