"""The user's own PeftModel trains sparse (smc_trainer/training/adapters/convert.py).

A `get_peft_model(base, LoraConfig(...))` built by the user is handed to `SparseTrainer` as it is: its LoRA layers
become masked adapters with the user's r, alpha, dropout, rsLoRA and target modules, so after peft's own
`merge_and_unload()` the non-zero pattern of every prunable weight is its mask, bit for bit; `save_pretrained`
and `PeftModel.from_pretrained` give back the same merged weights. DoRA is masked too (exact: its merge only
rescales rows); IA3 is accepted; tuners and copies that would bring pruned weights back are refused with the
module and the fix.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from peft import IA3Config, LoHaConfig, LoraConfig, PeftModel, PromptTuningConfig, get_peft_model
from sparse_helpers import pruned_leaks, sparse_args, toy_dataset
from tiny_models import dummy_inputs, make_tiny

from smc_trainer import SparseTrainer
from smc_trainer.engine.selection import keep_count
from smc_trainer.errors import UsageError
from smc_trainer.training.adapters import (
    MaskRef,
    SparseLoraLinear,
    bind_masks,
    convert_user_lora,
    load_sparse_adapter,
    merged_copy,
    remask,
)
from smc_trainer.training.adapters.release import StaticMasks

SPARSITY = 0.59
LORA_TARGETS = ["query", "value"]


def user_lora(**overrides) -> PeftModel:
    """What a peft user writes: a sequence classifier (so peft adds the classifier to modules_to_save)."""
    kw = dict(task_type="SEQ_CLS", r=4, lora_alpha=8, lora_dropout=0.1, use_rslora=True, target_modules=LORA_TARGETS)
    kw.update(overrides)
    return get_peft_model(make_tiny("bert"), LoraConfig(**kw))


def user_args(tmp_path, method: str, **overrides):
    kw = dict(max_steps=6, learning_rate=2e-2)
    kw.update(overrides)
    return sparse_args(tmp_path, method, SPARSITY, **kw)


def logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**dummy_inputs("bert", batch=4)).logits


def assert_nonzeros_are_the_masks(model: torch.nn.Module, masks: dict[str, torch.Tensor], total: int) -> None:
    """The non-zero pattern of every masked weight of the plain `model` is its mask, bit for bit, and the counts
    are exactly the budget's."""
    params = dict(model.named_parameters())
    assert masks.keys() <= params.keys()
    for name, mask in masks.items():
        assert torch.equal(params[name].detach() != 0, mask), f"{name}: non-zeros differ from the mask"
    kept = sum(int(m.sum()) for m in masks.values())
    zeros = sum(int((params[n].detach() == 0).sum()) for n in masks)
    assert kept == keep_count(1 - SPARSITY, total)
    assert zeros == total - kept


def trained(tmp_path, method: str, model: PeftModel | None = None, **overrides) -> SparseTrainer:
    trainer = SparseTrainer(model=model if model is not None else user_lora(), args=user_args(tmp_path, method,
                            **overrides), train_dataset=toy_dataset())
    trainer.train()
    return trainer


# ---- LoRA: converted, trained, merged with exact zeros ----------------------------------------------------


@pytest.mark.parametrize("method", ["omp_before", "gmp"])
def test_user_lora_trains_sparse_and_merges_to_the_mask(tmp_path, method):
    model = user_lora()
    lora_b = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    trainer = SparseTrainer(model=model, args=user_args(tmp_path, method), train_dataset=toy_dataset())
    assert trainer.model is model, "the user's own object is trained"
    layers = [m for m in model.modules() if isinstance(m, SparseLoraLinear)]
    assert len(layers) == 2 * len(LORA_TARGETS)  # 2 transformer layers
    for layer in layers:  # the user's configuration, kept
        assert layer.r["default"] == 4 and layer.lora_alpha["default"] == 8
        assert layer.scaling["default"] == 8 / 4 ** 0.5  # rsLoRA: alpha / sqrt(r)
        assert layer.lora_dropout["default"].p == 0.1
    trainer.train()
    assert pruned_leaks(trainer) == []
    changed = [n for n, p in model.named_parameters() if "lora_B" in n and not torch.equal(p.detach(), lora_b[n])]
    assert len(changed) == len(lora_b), "every adapter trained"
    masks = trainer.masks.masks
    assert {"classifier.weight", "bert.pooler.dense.weight"} <= masks.keys()
    before = logits(model)
    merged = model.merge_and_unload()
    assert_nonzeros_are_the_masks(merged, masks, trainer.masks.total)
    assert (logits(merged) - before).abs().max().item() <= 1e-5


def test_conversion_logs_one_line_with_what_was_converted(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="smc_trainer"):
        SparseTrainer(model=user_lora(), args=user_args(tmp_path, "omp_before"), train_dataset=toy_dataset())
    lines = [r.getMessage() for r in caplog.records if "converted your PeftModel" in r.getMessage()]
    assert lines == ["smc-trainer: converted your PeftModel's LoRA to masked adapters (the update is zero wherever "
                     "the base weight is pruned): 4 layers, adapter 'default': r=4, lora_alpha=8, rsLoRA, dropout "
                     "0.1, modules query, value, modules_to_save classifier, score"]
    assert all(r.levelno == logging.INFO for r in caplog.records if "converted your PeftModel" in r.getMessage())


def test_conversion_keeps_weights_trainability_and_the_seed():
    model = user_lora(init_lora_weights=False)  # non-zero B, so the forward pass depends on the adapters
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    expected = logits(model)  # no mask bound: a masked layer is plain LoRA
    rng = torch.get_rng_state()
    assert convert_user_lora(model) == 4
    assert torch.equal(torch.get_rng_state(), rng), "conversion must not move the training seed"
    assert {n: p.requires_grad for n, p in model.named_parameters()} == trainable
    assert all(torch.equal(p.detach(), state[n]) for n, p in model.named_parameters())
    assert torch.equal(logits(model), expected)
    assert convert_user_lora(model) == 0, "a second conversion has nothing to do"


def test_plain_lora_is_left_plain_with_sparse_adapter_false(tmp_path):
    model = user_lora()
    trainer = trained(tmp_path, "omp_before", model, sparse_adapter=False, peft="lora")
    assert not any(isinstance(m, SparseLoraLinear) for m in model.modules())
    assert_nonzeros_are_the_masks(merged_copy(trainer.model), trainer.masks.masks, trainer.masks.total)


# ---- save_pretrained / PeftModel.from_pretrained ------------------------------------------------------------


def test_save_pretrained_and_from_pretrained_give_the_same_merged_weights(tmp_path):
    trainer = trained(tmp_path / "run", "omp_before")
    model, masks = trainer.model, trainer.masks.masks
    out = str(tmp_path / "adapter")
    model.save_pretrained(out)  # the user's own save: a plain LoRA adapter peft loads anywhere
    trainer.masks.save(out)
    config = json.loads(Path(out, "adapter_config.json").read_text(encoding="utf-8"))
    assert (config["peft_type"], config["r"], config["lora_alpha"], config["use_rslora"]) == ("LORA", 4, 8, True)
    expected = merged_copy(model).state_dict()

    # peft's own loader on the pruned base, converted and bound to the masks as SparseTrainer does
    base = make_tiny("bert")
    remask(base, masks)
    loaded = PeftModel.from_pretrained(base, out)
    assert convert_user_lora(loaded) == 4
    bind_masks(loaded, StaticMasks(masks))
    # and smc-trainer's loader, from the pretrained base and the saved masks
    again = load_sparse_adapter(make_tiny("bert"), out)
    for merged in (loaded.merge_and_unload(), again.merge_and_unload()):
        state = merged.state_dict()
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[k], expected[k]) for k in expected), "merged weights differ"
        assert_nonzeros_are_the_masks(merged, masks, trainer.masks.total)


# ---- other tuners -----------------------------------------------------------------------------------------


def test_ia3_is_accepted_and_keeps_the_zeros(tmp_path):
    config = IA3Config(task_type="SEQ_CLS", target_modules=["query", "value", "output.dense"],
                       feedforward_modules=["output.dense"])
    model = get_peft_model(make_tiny("bert"), config)
    ia3 = {n: p.detach().clone() for n, p in model.named_parameters() if "ia3_l" in n}
    trainer = trained(tmp_path, "gmp", model)
    assert pruned_leaks(trainer) == []
    assert all(not torch.equal(p.detach(), ia3[n]) for n, p in model.named_parameters() if n in ia3)
    meta = trainer.adapter_metadata()
    assert meta["peft"] == "ia3" and meta["adapted_modules"] == 2 * 4  # query, value, two output.dense per layer
    before = logits(model)
    merged = model.merge_and_unload()
    assert_nonzeros_are_the_masks(merged, trainer.masks.masks, trainer.masks.total)
    assert (logits(merged) - before).abs().max().item() <= 1e-5


@pytest.mark.parametrize("config, message", [
    (LoHaConfig(target_modules=["query"]), "adapter 'default' is LOHA: its update is a dense matrix merged into each "
     "weight, which would fill the pruned positions. A sparse run accepts LORA .*IA3"),
    (PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=2), "is PROMPT_TUNING: it adds virtual tokens"),
])
def test_unsupported_tuners_are_refused_with_the_reason(tmp_path, config, message):
    model = get_peft_model(make_tiny("bert"), config)
    with pytest.raises(UsageError, match=message):
        SparseTrainer(model=model, args=user_args(tmp_path, "omp_before"), train_dataset=toy_dataset())


@pytest.mark.parametrize("method", ["omp_before", "gmp"])
def test_user_dora_trains_sparse_and_merges_to_the_mask(tmp_path, method):
    """DoRA's merged weight `m / ||W + D|| * (W + D)` keeps every zero when the update D is masked: exact."""
    model = user_lora(use_dora=True)
    magnitudes = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_magnitude_vector" in n}
    trainer = trained(tmp_path, method, model)
    variants = [type(m.lora_variant["default"]).__name__ for m in model.modules() if isinstance(m, SparseLoraLinear)]
    assert variants == ["MaskedDoraVariant"] * 4
    assert pruned_leaks(trainer) == []
    assert len(magnitudes) == 4 and all(not torch.equal(p.detach(), magnitudes[n])
                                        for n, p in model.named_parameters() if n in magnitudes)
    before = logits(model)
    merged = model.merge_and_unload()
    assert_nonzeros_are_the_masks(merged, trainer.masks.masks, trainer.masks.total)
    assert (logits(merged) - before).abs().max().item() <= 1e-5


@pytest.mark.parametrize("arch, targets", [("bert", ["query"]), ("gpt2", ["c_attn"])])
def test_masked_dora_with_an_all_ones_mask_is_peft_dora(arch, targets):
    """The masked DoRA forward is peft's DoRA when nothing is pruned: same outputs and gradients (A, B, magnitude)."""
    model = get_peft_model(make_tiny(arch), LoraConfig(r=2, target_modules=targets, use_dora=True,
                                                       init_lora_weights=False, fan_in_fan_out=arch == "gpt2"))
    convert_user_lora(model)
    layer = next(m for m in model.modules() if isinstance(m, SparseLoraLinear))
    weight = layer.get_base_layer().weight
    with torch.no_grad():
        layer.get_base_layer().bias.normal_()  # initialised to zero: a bias mistake would go unseen
    layer.train()
    x = torch.randn(3, 5, weight.shape[0 if arch == "gpt2" else 1])
    params = [layer.lora_A["default"].weight, layer.lora_B["default"].weight,
              layer.lora_magnitude_vector["default"].weight]
    outs, grads = [], []
    for masks in (None, StaticMasks({"mask": torch.ones_like(weight, dtype=torch.bool)})):
        layer.bind_mask(None if masks is None else MaskRef(masks, "mask"))
        out = layer(x)
        outs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), params))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-6, rtol=1e-5)
    for mine, peft_grad in zip(grads[1], grads[0]):
        torch.testing.assert_close(mine, peft_grad, atol=1e-5, rtol=1e-4)


def test_lora_bias_and_merged_adapters_are_refused_before_any_change(tmp_path):
    model = user_lora(lora_bias=True)
    with pytest.raises(UsageError, match="a sparse adapter supports plain LoRA and DoRA, not lora_bias"):
        SparseTrainer(model=model, args=user_args(tmp_path, "omp_before"), train_dataset=toy_dataset())
    assert not any(isinstance(m, SparseLoraLinear) for m in model.modules())
    merged = user_lora()
    merged.merge_adapter()
    with pytest.raises(UsageError, match=r"merged LoRA adapters; call model.unmerge_adapter\(\)"):
        SparseTrainer(model=merged, args=user_args(tmp_path, "omp_before"), train_dataset=toy_dataset())


def test_lora_on_a_pruned_embedding_is_refused(tmp_path):
    model = user_lora(target_modules=["query", "word_embeddings"])
    with pytest.raises(UsageError, match="adapter on the embedding 'bert.embeddings.word_embeddings' cannot be masked"):
        SparseTrainer(model=model, args=user_args(tmp_path, "omp_before"), train_dataset=toy_dataset())


# ---- modules_to_save ------------------------------------------------------------------------------------------


def test_active_copies_of_prunable_layers_are_masked(tmp_path):
    """A `modules_to_save` copy of a prunable layer is the weight the run prunes (full fine-tuning of that module
    under its mask): the pooler's and the classifier's copies train, and merge with exactly the mask's zeros."""
    model = user_lora(modules_to_save=["pooler.dense"])
    copies = {n: p.detach().clone() for n, p in model.named_parameters() if ".modules_to_save.default." in n}
    assert {n.split(".modules_to_save")[0] for n in copies} == {"base_model.model.bert.pooler.dense",
                                                                "base_model.model.classifier"}
    trainer = trained(tmp_path, "gmp", model)
    assert pruned_leaks(trainer) == []
    assert all(not torch.equal(p.detach(), copies[n]) for n, p in model.named_parameters()
               if n in copies and n.endswith("weight")), "the copies trained"
    assert_nonzeros_are_the_masks(model.merge_and_unload(), trainer.masks.masks, trainer.masks.total)


def test_an_inactive_copy_of_a_prunable_layer_is_refused(tmp_path):
    """Another adapter's copy is never masked: merging that adapter would bring back every pruned weight."""
    model = user_lora()
    model.add_adapter("other", LoraConfig(task_type="SEQ_CLS", target_modules=["query"]))
    with pytest.raises(UsageError, match=r"modules_to_save: 'classifier' holds a full copy for adapter 'other', "
                       r"which is not active.*'classifier.weight'.*Delete adapter 'other'.*--no_prune_heads"):
        SparseTrainer(model=model, args=user_args(tmp_path, "omp_before"), train_dataset=toy_dataset())
    # outside the prunable set the copy is no concern
    SparseTrainer(model=model, args=user_args(tmp_path, "omp_before", prune_heads=False),
                  train_dataset=toy_dataset())
