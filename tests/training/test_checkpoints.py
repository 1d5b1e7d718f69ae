"""Checkpoints count only when complete: manifests, resume points that skip half-written folders, and a run
SIGKILLed in the middle of a save that resumes from the previous checkpoint and ends bit-identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sparse_helpers import make_trainer, sparse_args
from transformers.testing_utils import CaptureLogger

import smc_trainer.training.trainer as trainer_module
from run_smc import main
from smc_trainer.engine.masks import MASKS_NAME
from smc_trainer.runs import pipeline
from smc_trainer.training import checkpoints
from smc_trainer.training.checkpoints import (
    COMPLETE_NAME,
    incomplete_reason,
    last_complete_checkpoint,
    resolve_resume_checkpoint,
    write_manifest,
)

ROOT = Path(__file__).resolve().parents[2]
SAVING = dict(max_steps=4, save_strategy="steps", save_steps=2, prune_frequency=1, gmp_start=0.0, gmp_end=1.0)


def fake_checkpoint(run_dir: Path, step: int, complete: bool = True) -> Path:
    folder = run_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w" * 64)
    (folder / "trainer_state.json").write_text("{}")
    if complete:
        write_manifest(str(folder), step=step)
    return folder


# ---- manifests and resume points ---------------------------------------------------------------


def test_manifest_detects_missing_truncated_and_unmarked_files(tmp_path):
    folder = fake_checkpoint(tmp_path, 2)
    assert incomplete_reason(str(folder)) is None
    manifest = json.loads((folder / COMPLETE_NAME).read_text())
    assert manifest["files"] == {"model.safetensors": 64, "trainer_state.json": 2} and manifest["global_step"] == 2

    (folder / "model.safetensors").write_bytes(b"w" * 10)  # truncated by a crash
    assert "model.safetensors has 10 bytes" in incomplete_reason(str(folder))
    (folder / "model.safetensors").unlink()
    assert "model.safetensors is missing" in incomplete_reason(str(folder))
    assert "no checkpoint_complete.json" in incomplete_reason(str(fake_checkpoint(tmp_path, 4, complete=False)))


def test_last_complete_checkpoint_skips_newer_incomplete_ones_with_a_warning_and_keeps_them(tmp_path):
    fake_checkpoint(tmp_path, 9)
    fake_checkpoint(tmp_path, 10)  # numeric order: 10 is newer than 9
    broken = fake_checkpoint(tmp_path, 12, complete=False)
    with CaptureLogger(checkpoints.logger) as cap:
        assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert str(broken) in cap.out and "incomplete" in cap.out
    assert broken.is_dir() and (broken / "model.safetensors").is_file()  # never deleted
    assert last_complete_checkpoint(str(tmp_path / "nowhere")) is None


def test_resolve_resume_checkpoint(tmp_path):
    good = fake_checkpoint(tmp_path, 2)
    broken = fake_checkpoint(tmp_path, 4, complete=False)
    assert resolve_resume_checkpoint(True, str(tmp_path)) == str(good)
    assert resolve_resume_checkpoint(str(good), str(tmp_path)) == str(good)
    assert resolve_resume_checkpoint(None, str(tmp_path)) is None
    with pytest.raises(ValueError, match=r"--resume_from_checkpoint .*checkpoint-4 is not a complete checkpoint.*"
                                         r"checkpoint-2"):
        resolve_resume_checkpoint(str(broken), str(tmp_path))
    with pytest.raises(ValueError, match="no complete checkpoint"):
        resolve_resume_checkpoint(True, str(tmp_path / "empty"))
    for spelled in ("true", "True", "last"):  # the flag's spelling of True
        assert resolve_resume_checkpoint(spelled, str(tmp_path)) == str(good)
    assert resolve_resume_checkpoint(str(tmp_path), "elsewhere") == str(good)  # a run folder: its last complete one
    only_broken = tmp_path / "only_broken"
    fake_checkpoint(only_broken, 4, complete=False)
    with pytest.raises(ValueError, match=r"only_broken is a run folder with no complete checkpoint.*checkpoint-4"):
        resolve_resume_checkpoint(str(only_broken), str(tmp_path))


def test_pipeline_and_cli_resume_points_ignore_incomplete_checkpoints(tmp_path):
    run = tmp_path / "run"
    args = sparse_args(run, "gmp", 0.5)
    fake_checkpoint(run, 2)
    fake_checkpoint(run, 4, complete=False)
    assert pipeline._resume_point(args, str(run)) == str(run / "checkpoint-2")

    only_broken = tmp_path / "only_broken"
    fake_checkpoint(only_broken, 4, complete=False)
    flags = ["--model_name_or_path", "tiny", "--use_cpu", "--report_to", "none", "--dense_cache_dir",
             str(tmp_path / "cache"), "--sparse_method", "gmp", "--sparsity", "0.5"]
    with pytest.raises(ValueError, match=r"no complete checkpoint.*checkpoint-4"):
        main([*flags, "--output_dir", str(only_broken)])
    with pytest.raises(ValueError, match="is not a complete checkpoint"):  # refused before any training
        main([*flags, "--output_dir", str(tmp_path / "new"), "--resume_from_checkpoint",
              str(only_broken / "checkpoint-4")])
    pipeline.set_aside_incomplete(str(only_broken))  # nothing resumable: moved aside, not deleted
    assert not only_broken.exists() and len(list(tmp_path.glob("only_broken.incomplete-*/checkpoint-4"))) == 1


# ---- SparseTrainer writes manifests last ---------------------------------------------------------


def test_every_checkpoint_gets_a_manifest_matching_its_files(tmp_path):
    trainer = make_trainer("bert", sparse_args(tmp_path / "run", "gmp", 0.5, **SAVING))
    trainer.train()
    for step in (2, 4):
        folder = tmp_path / "run" / f"checkpoint-{step}"
        files = json.loads((folder / COMPLETE_NAME).read_text())["files"]
        assert {"model.safetensors", MASKS_NAME, "optimizer.pt", "rng_state.pth", "trainer_state.json"} <= set(files)
        assert incomplete_reason(str(folder)) is None


def test_old_checkpoints_are_rotated_away_only_after_the_new_one_is_complete(tmp_path, monkeypatch):
    """With --save_total_limit 1, transformers deletes checkpoint-2 inside the save of checkpoint-4; a kill
    before the manifest must still leave checkpoint-2 to resume from."""
    real = trainer_module.write_manifest

    def killed_at_step_4(folder, step=None):
        if step == 4:
            raise KeyboardInterrupt("killed before the manifest")
        return real(folder, step=step)

    monkeypatch.setattr(trainer_module, "write_manifest", killed_at_step_4)
    trainer = make_trainer("bert", sparse_args(tmp_path / "run", "gmp", 0.5, save_total_limit=1, **SAVING))
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert last_complete_checkpoint(str(tmp_path / "run")) == str(tmp_path / "run" / "checkpoint-2")
    assert (tmp_path / "run" / "checkpoint-4" / "trainer_state.json").is_file()  # all written, yet not declared


def test_a_save_over_a_complete_checkpoint_withdraws_its_manifest_first(tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer = make_trainer("bert", sparse_args(run, "gmp", 0.5, **SAVING))
    trainer.train()
    assert incomplete_reason(str(run / "checkpoint-4")) is None

    def crash(self, output_dir):
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(trainer_module.SparseTrainer, "_save_optimizer_and_scheduler", crash)
    again = make_trainer("bert", sparse_args(run, "gmp", 0.5, **SAVING))
    with pytest.raises(KeyboardInterrupt):
        again.train(resume_from_checkpoint=str(run / "checkpoint-2"))  # rewrites checkpoint-4
    assert "no checkpoint_complete.json" in incomplete_reason(str(run / "checkpoint-4"))


# ---- the end-to-end proof: SIGKILL during a save, rerun the same command ------------------------


def _cli_flags(output_dir: Path) -> list[str]:
    return ["--model_name_or_path", "tiny", "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2",
            "--output_dir", str(output_dir), "--report_to", "none", "--num_synthetic_examples", "48",
            "--max_eval_samples", "16", "--use_cpu", "--disable_tqdm", "true", "--log_level", "warning",
            "--dense_cache_dir", str(output_dir.parent / "cache"), "--sparse_method", "gmp", "--sparsity", "0.5",
            "--prune_frequency", "1", "--gmp_start", "0", "--gmp_end", "1"]


@pytest.mark.parametrize("value", ["true", "run folder"])
def test_resume_flag_picks_the_last_complete_checkpoint(tmp_path, monkeypatch, value):
    """`--resume_from_checkpoint true` or `--resume_from_checkpoint RUN_DIR` after a kill before the manifest of
    checkpoint-6: the run resumes from checkpoint-4 and ends bit-identical."""
    run = tmp_path / "run"
    main(_cli_flags(run))
    finished = load_file(str(run / "model.safetensors"))
    (run / "checkpoint-6" / COMPLETE_NAME).unlink()
    picked = []
    real = trainer_module.resolve_resume_checkpoint

    def recording(resume, output_dir):
        picked.append(real(resume, output_dir))
        return picked[-1]

    monkeypatch.setattr(trainer_module, "resolve_resume_checkpoint", recording)
    main([*_cli_flags(run), "--resume_from_checkpoint", str(run) if value == "run folder" else value])
    assert picked == [str(run / "checkpoint-4")]
    assert incomplete_reason(str(run / "checkpoint-6")) is None  # rewritten, declared complete again
    again = load_file(str(run / "model.safetensors"))
    assert again.keys() == finished.keys() and all(torch.equal(again[k], finished[k]) for k in finished)


def test_run_killed_during_a_save_resumes_from_the_last_complete_checkpoint_bit_identical(tmp_path):
    reference = tmp_path / "reference"
    main(_cli_flags(reference))

    run, flag = tmp_path / "run", tmp_path / "hanging"
    env = {**os.environ, "SMC_TEST_HANG_AT_STEP": "4", "SMC_TEST_HANG_FLAG": str(flag), "PYTHONPATH": str(ROOT),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "kill_during_save.py"), *_cli_flags(run)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while not flag.exists():
            assert proc.poll() is None, f"the run ended before hanging: {proc.stderr.read().decode()[-2000:]}"
            assert time.time() < deadline, "the run never reached the save of step 4"
            time.sleep(0.1)
    finally:
        proc.kill()  # SIGKILL: no handler, no cleanup
        proc.wait()
        proc.stderr.close()
    broken = run / "checkpoint-4"
    assert (broken / "model.safetensors").is_file() and not (broken / "trainer_state.json").exists()
    assert incomplete_reason(str(broken)) is not None
    assert last_complete_checkpoint(str(run)) == str(run / "checkpoint-2")

    main(_cli_flags(run))  # the same command again: resumes from checkpoint-2, rewrites checkpoint-4

    state = json.loads((run / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert incomplete_reason(str(broken)) is None
    for name in ("model.safetensors", MASKS_NAME):
        ours, ref = load_file(str(run / name)), load_file(str(reference / name))
        assert ours.keys() == ref.keys()
        for key in ref:
            assert torch.equal(ours[key], ref[key]), f"{name}:{key} differs from the uninterrupted run"
    ours, ref = (json.loads((d / "all_results.json").read_text()) for d in (run, reference))
    assert ours["eval_accuracy"] == ref["eval_accuracy"] and ours["eval_loss"] == ref["eval_loss"]
