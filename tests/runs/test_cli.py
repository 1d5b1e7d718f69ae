"""run_smc.py end to end on the quickstart recipe with a tiny from-scratch model (offline, a few seconds)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from run_smc import main

ROOT = Path(__file__).resolve().parents[2]


def tiny_run(output_dir: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", "tiny", "--max_steps", "4", "--output_dir", str(output_dir),
            "--report_to", "none", "--num_synthetic_examples", "64", "--max_eval_samples", "32",
            "--use_cpu", "--disable_tqdm", "true", "--log_level", "warning",
            "--dense_cache_dir", str(output_dir.parent / "dense_cache"), *extra]


def test_cli_trains_evaluates_and_writes_outputs(tmp_path):
    out = tmp_path / "run"
    metrics = main(tiny_run(out, "--sparse_method", "dense", "--sparsity", "0"))
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["eval_samples"] == 32 and metrics["train_samples"] == 64
    for name in ("model.safetensors", "config.json", "tokenizer.json", "train_results.json", "eval_results.json",
                 "test_results.json", "all_results.json", "sparsity_report.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["eval_accuracy"] == metrics["eval_accuracy"]


def test_cli_sparse_run_reaches_target(tmp_path):
    out = tmp_path / "omp"
    metrics = main(tiny_run(out, "--sparse_method", "omp_before", "--sparsity", "0.5"))
    assert metrics["sparsity/overall"] == pytest.approx(0.5, abs=1e-3)
    masks = load_file(str(out / "sparse_masks.safetensors"))
    report = json.loads((out / "sparsity_report.json").read_text())
    assert all(m.dtype == torch.bool for m in masks.values()) and set(masks) == {r["name"] for r in report["layers"]}
    assert report["kept"] == sum(int(m.sum()) for m in masks.values())
    assert report["mask_sparsity"] == pytest.approx(0.5, abs=1e-6)
    assert json.loads((out / "all_results.json").read_text())["eval_accuracy"] == metrics["eval_accuracy"]


def test_after_and_iterative_methods_run_through_the_pipeline(tmp_path, monkeypatch):
    import smc_trainer.runs.pipeline as pipeline

    seen = {}

    def fake_run(config, output_dir=None):
        seen["config"] = config
        return [pipeline.RunOutcome(method="omp_after", target_sparsity=0.5, mask_sparsity=0.5, measured_sparsity=0.5,
                                    metrics={"eval_accuracy": 0.3}, output_dir=str(tmp_path), steps=4, wall_time_s=0.1)]

    monkeypatch.setattr(pipeline, "run", fake_run)
    metrics = main(tiny_run(tmp_path / "after", "--sparse_method", "omp_after", "--sparsity", "0.5"))
    config = seen["config"]
    assert config.recipe.name == "quickstart" and config.training_args.sparse_method == "omp_after"
    assert config.model_args.model_name_or_path == "tiny"
    assert metrics == {"eval_accuracy": 0.3, "sparsity/overall": 0.5}


def test_cli_refuses_non_empty_output_dir_without_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="is not empty"):
        main(tiny_run(tmp_path, "--sparse_method", "dense", "--sparsity", "0"))


def test_cli_rerun_of_an_interrupted_chain_or_cv_run_is_allowed(tmp_path):
    """A folder holding an LTH chain's rounds or a CV run's folds is resumed stage by stage, not refused."""
    from run_smc import check_output_dir
    from smc_trainer.runs.config import parse_run_config

    for stage in ("round-01", "fold-0"):
        out = tmp_path / stage.split("-")[0]
        (out / stage).mkdir(parents=True)
        check_output_dir(parse_run_config(tiny_run(out, "--sparse_method", "lth", "--sparsity", "0.2")))
    (tmp_path / "other" / "round-x").mkdir(parents=True)  # not one of ours: still refused
    with pytest.raises(ValueError, match="is not empty"):
        check_output_dir(parse_run_config(tiny_run(tmp_path / "other", "--sparse_method", "lth", "--sparsity", "0.2")))


def test_help_lists_every_flag():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "run_smc.py"), "--help"], capture_output=True, text=True,
                            cwd=ROOT, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    for flag in ("--sparse_method", "--sparsity", "--recipe", "--model_name_or_path", "--learning_rate",
                 "--prune_frequency", "--train_file"):
        assert flag in result.stdout


def _help(full: bool = False) -> tuple[object, str]:
    """A fresh run parser and its help text (`--help`, or `--help-all` with `full`)."""
    import contextlib
    import io

    from smc_trainer.runs.config import make_parser
    from smc_trainer.runs.help_groups import print_help

    parser, out = make_parser(), io.StringIO()
    with contextlib.redirect_stdout(out):
        print_help(parser, full=full)
    return parser, out.getvalue()


def _listed(text: str) -> list[str]:
    """The first option string of every flag the help lists (its lines start with two spaces and `--`)."""
    return [line.split()[0].rstrip(",") for line in text.splitlines() if line.startswith("  --")]


def test_help_groups_every_flag_under_a_title_in_words_once():
    from smc_trainer.runs.help_groups import TRAINING_GROUP

    parser, text = _help()
    groups = [g for g in parser._action_groups if g._group_actions]
    titles = [g.title for g in groups]
    assert len(titles) == len(set(titles))
    for title in titles:  # a title in words, not a class name that slipped through the fallback
        assert " " in title or title in ("options", "Plugins"), title
    assert {"GMP (gradual magnitude pruning)", "RigL / SET (dynamic sparse training: drop and grow)",
            "LTH / LRR (iterative magnitude pruning)", "LoRA (--peft lora)", "Arithmetic (GTS, Graph2Tree)",
            "Recipe and data", TRAINING_GROUP} <= set(titles)
    assert titles[-1] == TRAINING_GROUP  # our groups first, transformers' flags last
    for action in parser._actions:  # every flag sits in exactly one group
        assert sum(action in g._group_actions for g in parser._action_groups) == 1, action.dest
    listed = _listed(text)
    assert len(listed) == len(set(listed)), "a flag is listed twice"
    group_of = {a.dest: g.title for g in groups for a in g._group_actions}
    assert (group_of["gmp_start"], group_of["rigl_init_method"], group_of["lora_r"], group_of["gts_hidden_size"],
            group_of["protein_head_learning_rate"], group_of["learning_rate"]) == (
        "GMP (gradual magnitude pruning)", "RigL / SET (dynamic sparse training: drop and grow)", "LoRA (--peft lora)",
        "Arithmetic (GTS, Graph2Tree)", "Protein model (ESM / ProteinBERT head and schedule)", TRAINING_GROUP)


def test_help_folds_the_rarer_training_flags_and_help_all_lists_them():
    from transformers import Seq2SeqTrainingArguments

    from smc_trainer.runs.help_groups import COMMON_TRAINING_FLAGS

    _, short = _help()
    parser, full = _help(full=True)
    short_flags, full_flags = set(_listed(short)), set(_listed(full))
    rare_names = {f.name for f in dataclasses.fields(Seq2SeqTrainingArguments)} - set(COMMON_TRAINING_FLAGS)
    rare = {a.option_strings[0] for a in parser._actions if a.dest in rare_names} & full_flags  # --no_* too
    assert {"--lr_scheduler_type", "--no_remove_unused_columns"} <= rare
    assert not rare & short_flags
    assert short_flags | rare == full_flags  # nothing else differs
    assert {f"--{name}" for name in COMMON_TRAINING_FLAGS} <= short_flags
    hidden = {a.dest for a in parser._actions if a.option_strings and a.option_strings[0] in rare}
    assert f"; {len(hidden)} more" in " ".join(short.split())
    assert len(short.splitlines()) < len(full.splitlines())


def test_former_rigl_flags_parse_but_are_not_listed():
    parser, text = _help()
    option_lines = [line for line in text.splitlines() if line.startswith("  --")]
    assert "--rigl_init_method" in _listed(text)
    assert not [line for line in option_lines if "--init_method" in line or "--init-method" in line]
    assert "Formerly --init_method (deprecated, still accepted)." in " ".join(text.split())
    namespace, _ = parser.parse_known_args(["--init_method", "snip", "--update-interval", "3"])
    assert (namespace.rigl_init_method, namespace.rigl_update_interval) == ("snip", 3)
