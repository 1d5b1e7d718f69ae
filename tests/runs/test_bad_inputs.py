"""Bad input is refused early and clearly: one `run_smc.py: error: ...` line naming the bad value (and the valid
choices where there are any), before any model is loaded, and every output of an earlier run left byte for byte
as it was (issue 25, item 4)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import transformers
from huggingface_hub import constants

import run_smc
import smc_trainer.release.hub as hub
import smc_trainer.runs.executors.node as node
from smc_trainer.engine.masks import MASKS_NAME
from smc_trainer.methods import method_names
from smc_trainer.runs import pipeline
from smc_trainer.runs.ledger import Ledger
from smc_trainer.runs.presets import preset_names
from smc_trainer.runs.recipes import RECIPES_DIR
from smc_trainer.runs.run_config import RESULT_NAME, RunOutcome
from smc_trainer.runs.sweep import SweepArguments, run_sweep


def tiny_flags(output_dir: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", "tiny", "--max_steps", "2", "--output_dir", str(output_dir), "--report_to", "none",
            "--num_synthetic_examples", "48", "--max_eval_samples", "16", "--use_cpu", "--disable_tqdm", "true",
            "--log_level", "warning", "--dense_cache_dir", str(output_dir.parent / "cache"),
            "--sparse_method", "omp_before", "--sparsity", "0.5", *extra]


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `root`: its bytes and modification time."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


def cli_error(capsys, argv: list[str], code: int = 2) -> str:
    """Run the command line; it must end with exactly one `run_smc.py: error:` line (no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        run_smc.cli(argv)
    assert exit_info.value.code == code
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("run_smc.py: error: ")]
    assert len(lines) == 1 and err.strip().endswith(lines[0]), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One real finished tiny run (a complete checkpoint-2, weights, masks, result): an earlier run's outputs."""
    out = tmp_path_factory.mktemp("earlier") / "run"
    run_smc.main(tiny_flags(out, "--save_strategy", "steps", "--save_steps", "2"))
    assert (out / RESULT_NAME).is_file() and (out / "checkpoint-2" / MASKS_NAME).is_file()
    return out


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if a model is built or loaded, or a run starts."""
    def fail(*args, **kwargs):
        pytest.fail("a model was loaded or a run started before the bad input was refused")

    monkeypatch.setattr(pipeline, "run", fail)
    monkeypatch.setattr(pipeline, "build_task", fail)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(fail))


@pytest.mark.parametrize("damage", ["truncated", "zero-byte"])
def test_corrupt_model_safetensors_is_named(capsys, tmp_path, finished, no_loading, damage):
    model = tmp_path / "model"
    shutil.copytree(finished, model, ignore=shutil.ignore_patterns("checkpoint-*"))
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    before = snapshot(finished)
    line = cli_error(capsys, tiny_flags(tmp_path / "out", "--model_name_or_path", str(model)))
    assert str(weights) in line and "corrupt or truncated" in line and "--model_name_or_path" in line
    assert "SafetensorError" not in line
    assert not (tmp_path / "out").exists() and snapshot(finished) == before


@pytest.mark.parametrize("name", ["./no/such/model", "no/such/model", "{tmp}/missing-model"])
def test_missing_local_model_folder_says_so(capsys, tmp_path, no_loading, name):
    name = name.format(tmp=tmp_path)
    line = cli_error(capsys, tiny_flags(tmp_path / "out", "--model_name_or_path", name))
    assert f"'{name}': no such folder" in line and "Repo id" not in line
    assert not (tmp_path / "out").exists()


def test_only_hub_like_strings_count_as_hub_ids():
    from smc_trainer.tasks.loading import looks_like_hub_id

    assert looks_like_hub_id("owner/name") and looks_like_hub_id("roberta-base") and looks_like_hub_id("tiny")
    for not_an_id in ("./model", "/abs/model", "~/model", "a/b/c", "owner/na me", "owner//name", "owner/name..x"):
        assert not looks_like_hub_id(not_an_id), not_an_id


@pytest.mark.parametrize("method, shown", [("gmp", "gmp"), ("omp_before", "omp_before"),
                                           ("obert", "obert (a preset of lrr)")])
def test_sparsity_zero_with_a_sparse_method_is_refused(capsys, tmp_path, no_loading, method, shown):
    line = cli_error(capsys, tiny_flags(tmp_path / "out", "--sparse_method", method, "--sparsity", "0"))
    assert f"--sparse_method {shown} at --sparsity 0 prunes nothing" in line and "--sparse_method dense" in line


def test_unknown_sparse_method_lists_methods_and_presets(capsys, tmp_path, no_loading):
    line = cli_error(capsys, tiny_flags(tmp_path / "out", "--sparse_method", "obret"))
    assert "got 'obret'" in line and "did you mean 'obert'?" in line
    assert {"obert", "gmp_star", "obert_gradual"} <= set(preset_names())
    listed = set(re.split(r"[ ,()]+", line.split("must be one of ", 1)[1].split("; got")[0]))
    assert {*method_names(), *preset_names()} <= listed


def test_run_summary_is_a_plain_stdout_line(capsys, caplog, tmp_path, monkeypatch):
    outcome = RunOutcome(method="omp_before", target_sparsity=0.5, mask_sparsity=0.5, measured_sparsity=0.5,
                         metrics={"eval_accuracy": 0.25}, output_dir=str(tmp_path / "out"), steps=2, wall_time_s=0.1)
    monkeypatch.setattr(pipeline, "run", lambda config: [outcome])
    run_smc.cli(tiny_flags(tmp_path / "out"))
    out = capsys.readouterr().out.splitlines()
    done = [line for line in out if "Done:" in line]
    assert done == [f"Done: quickstart with the recipe model: omp_before at target sparsity 0.5 (measured 0.5000); "
                    f"eval_accuracy 0.2500 (chance 0.2). Outputs in {tmp_path / 'out'}"]
    assert not any("Done:" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("case", ["file", "under a file", "not writable"])
def test_output_dir_that_cannot_be_a_folder(capsys, tmp_path, monkeypatch, no_loading, case):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    locked = tmp_path / "locked"
    locked.mkdir()
    out = {"file": notes, "under a file": notes / "run", "not writable": locked / "run"}[case]
    if case == "not writable":
        locked.chmod(0o555)
        real_access = os.access
        monkeypatch.setattr(os, "access",  # root writes anywhere: deny writes there as chmod does for a user
                            lambda path, mode, **kw: False if os.fspath(path) == str(locked) and mode & os.W_OK
                            else real_access(path, mode, **kw))
    before = snapshot(tmp_path)
    try:
        line = cli_error(capsys, tiny_flags(out))
    finally:
        locked.chmod(0o755)
    expected = {"file": f"--output_dir {notes} is a file", "under a file": f"lies under {notes}, which is a file",
                "not writable": f"{locked} is not writable"}[case]
    assert expected in line and str(out) in line
    assert snapshot(tmp_path) == before


def test_rerun_into_a_finished_run_changes_nothing(capsys, tmp_path, finished, no_loading):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = snapshot(out)
    line = cli_error(capsys, tiny_flags(out, "--save_strategy", "steps", "--save_steps", "2"))
    assert f"--output_dir {out} already holds a finished run ({RESULT_NAME})" in line
    assert "--overwrite_output_dir" in line
    assert snapshot(out) == before


@pytest.mark.parametrize("damage", ["deleted", "corrupt"])
@pytest.mark.parametrize("resume", ["auto", "explicit"])
def test_resume_with_a_deleted_or_corrupt_mask_file_names_it(capsys, tmp_path, finished, no_loading, damage, resume):
    out = tmp_path / "interrupted"  # an interrupted run: its checkpoint, no final outputs
    shutil.copytree(finished / "checkpoint-2", out / "checkpoint-2")
    masks = out / "checkpoint-2" / MASKS_NAME
    if damage == "deleted":
        masks.unlink()
    else:  # same size, so the completion manifest still matches: only the header check can tell
        data = bytearray(masks.read_bytes())
        data[8:40] = b"x" * 32
        masks.write_bytes(bytes(data))
    before = snapshot(out)
    extra = ["--resume_from_checkpoint", str(out / "checkpoint-2")] if resume == "explicit" else []
    line = cli_error(capsys, tiny_flags(out, *extra))
    if damage == "deleted":
        assert f"{MASKS_NAME} is missing" in line
    else:
        assert f"{masks} is corrupt or truncated" in line
    assert str(out / "checkpoint-2") in line
    assert snapshot(out) == before


QUICKSTART_RECIPE = (RECIPES_DIR / "quickstart.yaml").read_text(encoding="utf-8")


@pytest.mark.parametrize("old, new, expected", [
    ("chance_level: 0.2", "chance_levle: 0.2",
     "unknown top-level key(s) 'chance_levle' (did you mean 'chance_level'?)"),
    ("  warmup_steps: 4", "  warmup_step: 4", "args.warmup_step is not a known flag (did you mean 'warmup_steps'?)"),
    ("learning_rate: 1.0e-4", "learning_rate: fast", "args.learning_rate must be a number; got 'fast'"),
    ("chance_level: 0.2", "chance_level: high", "chance_level must be a number in [0, 1]; got 'high'"),
    ("  max_steps: 40", "  max_steps: forty", "args.max_steps must be an integer; got 'forty'"),
    ('eval_strategy: "no"', "eval_strategy: sometimes", "args.eval_strategy must be one of no, steps, epoch; got "
                                                        "'sometimes'"),
])
def test_recipe_typo_or_wrong_type_is_named(capsys, tmp_path, no_loading, old, new, expected):
    assert old in QUICKSTART_RECIPE
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(QUICKSTART_RECIPE.replace(old, new, 1), encoding="utf-8")
    line = cli_error(capsys, ["--recipe", str(recipe), *tiny_flags(tmp_path / "out")])  # flags do not hide it
    assert f"recipe {recipe}" in line and expected in line


@pytest.mark.parametrize("offline", [True, False])
def test_push_to_hub_offline_or_without_token_fails_before_training(capsys, tmp_path, monkeypatch, no_loading,
                                                                     offline):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(hub, "get_token", lambda: None)
    monkeypatch.setattr(hub.HfApi, "create_repo", lambda *a, **k: pytest.fail("the Hub was contacted"))
    line = cli_error(capsys, tiny_flags(tmp_path / "out", "--push_to_hub", "--hub_model_id", "me/tiny"))
    expected = "--push_to_hub needs the network, but HF_HUB_OFFLINE=1" if offline else \
        "--push_to_hub needs a Hub token with write access: pass --hub_token, set HF_TOKEN"
    assert expected in line
    assert not (tmp_path / "out").exists()


def test_ctrl_c_mid_sweep_then_rerun_continues_and_keeps_finished_results(capsys, tmp_path, monkeypatch):
    sweep_dir = tmp_path / "sweep"
    flags = ["--model_name_or_path", "tiny", "--max_steps", "2", "--report_to", "none", "--use_cpu"]
    sweep = ["--recipes", "quickstart", "--methods", "dense,gmp", "--sparsities", "0.2,0.36", "--sweep_dir",
             str(sweep_dir)]
    trained: list[str] = []

    def fake_run(spec, configs, interrupt_at=None):
        if len(trained) == interrupt_at:
            raise KeyboardInterrupt
        trained.append(spec.key)
        os.makedirs(spec.run_dir, exist_ok=True)
        outcome = RunOutcome(method=spec.label, target_sparsity=0.0, mask_sparsity=0.0, measured_sparsity=0.0,
                             metrics={"eval_accuracy": 0.5}, output_dir=spec.run_dir, steps=2, wall_time_s=0.1)
        outcome.save(spec.run_dir)
        return outcome

    monkeypatch.setattr(node, "run_node", lambda spec, configs: fake_run(spec, configs, interrupt_at=2))
    line = cli_error(capsys, ["sweep", *sweep, *flags], code=130)
    assert "interrupted (Ctrl-C)" in line and "rerun the same command to continue" in line
    ledger = Ledger(str(sweep_dir / "ledger.jsonl"))
    first = [r["key"] for r in ledger.records()]
    assert first == trained and len(first) == 2
    before = snapshot(sweep_dir)

    trained.clear()
    monkeypatch.setattr(node, "run_node", fake_run)
    appended = run_sweep(SweepArguments(recipes="quickstart", methods="dense,gmp", sparsities="0.2,0.36",
                                        sweep_dir=str(sweep_dir)), flags)
    assert len(trained) == 1 and trained[0] not in first  # only the run the interruption stopped
    assert [r["key"] for r in appended] == trained
    after = snapshot(sweep_dir)
    assert after["ledger.jsonl"][0].startswith(before["ledger.jsonl"][0])  # finished records kept byte for byte
    assert [r["key"] for r in ledger.records()] == [*first, *trained]
    assert {k: v for k, v in after.items() if k != "ledger.jsonl"}.items() >= \
        {k: v for k, v in before.items() if k != "ledger.jsonl"}.items()  # finished run folders untouched
