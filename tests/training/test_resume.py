"""Invariant 6: masks and method state are in every checkpoint; resuming reproduces the uninterrupted run."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from sparse_helpers import make_trainer, preset_overrides, sparse_args

from smc_trainer.engine.masks import MASKS_NAME, REPORT_NAME
from smc_trainer.training.callbacks import STATE_NAME

STEPS = dict(max_steps=6, save_strategy="steps", save_steps=3, gradient_accumulation_steps=2,
             prune_frequency=1, gmp_start=0.0, gmp_end=1.0, rigl_update_interval=2)


def _final_state(trainer):
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    masks = {n: m.clone() for n, m in trainer.masks.masks.items()}
    return weights, masks


# criteria with state across steps (movement) or gradient batches at every event (oBERT), and the presets
VARIANTS = {
    "gmp+movement": ("gmp", {"criterion": "movement"}),
    "gmp+obert": ("gmp", {"criterion": "obert", "obert_block_size": 4, "obert_num_grads": 2}),
    "gmp+kd+lr_rewind": ("gmp", {"distill_teacher": "dense", "lr_rewind": True, "lr_rewind_final_ratio": 0.1}),
    "gmp_star": ("gmp", {**preset_overrides("gmp_star"), "gmp_start": 0.0, "gmp_end": 1.0}),
    "obert_gradual": ("gmp", {**preset_overrides("obert_gradual"), "obert_num_grads": 2, "gmp_end": 1.0}),
    # LoRA on the frozen base pruned on schedule: a checkpoint holds the adapters, the head and the masks
    "gmp+lora": ("gmp", {"peft": "lora", "lora_r": 2}),
    "gmp+lora_straight_through": ("gmp", {"peft": "lora", "lora_r": 2, "adapter_gradient": "straight_through"}),
}


def _args(output_dir, method):
    base, extra = VARIANTS.get(method, (method, {}))
    extra = {k: v for k, v in extra.items() if k != "sparse_method"}
    return sparse_args(output_dir, base, 0.59, **{**STEPS, **extra})


@pytest.mark.parametrize("method", ["gmp", "rigl", "set", "snip", "random_before", *VARIANTS])
def test_resume_from_step_3_equals_uninterrupted_run(tmp_path, method):
    full = make_trainer("bert", _args(tmp_path / "full", method))
    full.train()
    full_weights, full_masks = _final_state(full)

    ckpt = tmp_path / "full" / "checkpoint-3"
    for name in (MASKS_NAME, STATE_NAME, REPORT_NAME):
        assert (ckpt / name).is_file(), f"{name} missing from checkpoint"
    saved = load_file(str(ckpt / MASKS_NAME))
    assert all(m.dtype == torch.bool for m in saved.values())
    assert json.loads((ckpt / STATE_NAME).read_text())["step"] == 3

    # a fresh process: new model object with a different init, resumed from step 3 (with LoRA: the adapters and
    # head; the frozen base is the pretrained model again, pruned by the checkpoint's masks)
    resumed = make_trainer("bert", _args(tmp_path / "full", method))
    with torch.no_grad():
        for p in resumed.model.parameters():
            if p.requires_grad or "lora" not in method:
                p.add_(1.0)
    resumed.train(resume_from_checkpoint=str(ckpt))
    weights, masks = _final_state(resumed)

    assert resumed.sparsity_callback.step == 6
    assert masks.keys() == full_masks.keys()
    for name in full_masks:
        assert torch.equal(masks[name], full_masks[name]), f"mask {name} differs after resume"
    for name in full_weights:
        torch.testing.assert_close(weights[name], full_weights[name], rtol=0, atol=0, msg=f"weight {name} differs")


def test_resume_with_another_method_is_refused(tmp_path):
    first = make_trainer("bert", sparse_args(tmp_path / "run", "gmp", 0.5, **STEPS))
    first.train()
    other = make_trainer("bert", sparse_args(tmp_path / "run", "rigl", 0.5, **STEPS))
    with pytest.raises(ValueError, match="gmp"):
        other.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-3"))


def test_save_model_writes_masks_report_and_plain_weights(tmp_path):
    from transformers import AutoModelForSequenceClassification

    trainer = make_trainer("gpt2", sparse_args(tmp_path / "run", "omp_before", 0.59))
    trainer.train()
    out = tmp_path / "final"
    trainer.save_model(str(out))
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["method"] == "omp_before" and report["target_sparsity"] == 0.59
    assert report["kept"] == sum(int(m.sum()) for m in trainer.masks.masks.values())
    assert {row["name"] for row in report["layers"]} == set(trainer.masks.masks)
    assert all(row["nonzero"] <= row["kept"] for row in report["layers"])
    masks = load_file(str(out / MASKS_NAME))
    # the weights load with plain from_pretrained, zeros in place
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(out))
    params = dict(reloaded.named_parameters())
    for name, mask in masks.items():
        assert mask.dtype == torch.bool
        assert bool((params[name].detach()[~mask] == 0).all())
    assert os.path.isfile(out / "model.safetensors")
