"""LoRA on sparse models (`--peft lora`, smc_trainer/training/adapters): masked adapters keep every zero.

Every method that runs on a frozen base is trained with LoRA on tiny models; after peft's own
`merge_and_unload()` every pruned weight is exactly zero and the merged model computes what the unmerged one
did. Methods that need to train the base are refused at parse time. Masks of a LoRA run load onto the plain
model and back; the adapter release goes through a real `PeftModel.from_pretrained`.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import LoraVariant
from safetensors.torch import load_file
from sparse_helpers import pruned_leaks, sparse_args, toy_dataset
from tiny_models import dummy_inputs, make_tiny

from smc_trainer import SparseTrainer, method_names
from smc_trainer.engine.masks import MASKS_NAME, MaskSet
from smc_trainer.engine.selection import keep_count
from smc_trainer.engine.targets import find_targets
from smc_trainer.errors import UsageError
from smc_trainer.methods import get_method_class
from smc_trainer.training.adapters import (
    MaskedLoraVariant,
    SparseLoraLinear,
    bind_masks,
    load_sparse_adapter,
    merged_copy,
    sparse_lora_config,
)
from smc_trainer.training.adapters.layers import FusedMaskedLoraLinear, MaskedLowRank


def _lora_conflict(method: str) -> str | None:
    """Why `method` (with its default criterion) cannot train a frozen base, or None."""
    return get_method_class(method).lora_refusal(SimpleNamespace(criterion=None))


FROZEN_OK = [m for m in method_names() if _lora_conflict(m) is None]
REFUSED = [m for m in method_names() if _lora_conflict(m) is not None]
LORA_TARGETS = {"bert": ["query", "value", "dense"], "gpt2": ["c_attn", "c_fc", "c_proj"]}


def lora_args(tmp_path, method: str, sparsity: float, **overrides):
    kw = dict(peft="lora", lora_r=4, learning_rate=2e-2, max_steps=6)
    kw.update(overrides)
    return sparse_args(tmp_path, method, sparsity, **kw)


def lora_trainer(arch: str, args, model=None) -> SparseTrainer:
    return SparseTrainer(model=model if model is not None else make_tiny(arch), args=args,
                         train_dataset=toy_dataset())


def random_masks(model, density: float = 0.4, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {t.name: torch.rand(t.param.shape, generator=gen) < density for t in find_targets(model)}


def pruned_nonzero(model, masks) -> int:
    """Non-zero weights at pruned positions, by plain parameter name (adapters seen through)."""
    params = {t.name: t.param for t in find_targets(model)}
    return sum(int(torch.count_nonzero(params[n].detach()[~m])) for n, m in masks.items())


def logits(model, arch: str) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**dummy_inputs(arch, batch=4)).logits


# ---- the peft mechanism relied on --------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_peft_mechanism(arch):
    """Fails loudly if a peft release changes what the masked layers rely on: custom-module dispatch
    (`LoraConfig._register_custom_module`), a layer's `lora_variants` choosing the variant, and the variant
    owning forward and merge."""
    assert hasattr(LoraConfig, "_register_custom_module"), "peft dropped LoraConfig._register_custom_module"
    assert issubclass(MaskedLoraVariant, LoraVariant)
    model = make_tiny(arch)
    masks = random_masks(model)
    config = sparse_lora_config(LoraConfig(target_modules=LORA_TARGETS[arch], r=2, init_lora_weights=False,
                                           fan_in_fan_out=arch == "gpt2"))
    peft_model = get_peft_model(model, config)
    layers = [m for m in peft_model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    assert layers and all(isinstance(m, SparseLoraLinear) for m in layers), "peft did not build SparseLoraLinear"
    assert all(isinstance(m.lora_variant["default"], MaskedLoraVariant) for m in layers)
    owner = MaskSet(find_targets(peft_model))
    owner.set_masks(masks)
    assert bind_masks(peft_model, owner) == len(layers)
    # forward: base + the masked update, computed by hand for one layer
    layer = layers[0]
    x = torch.randn(3, layer.get_base_layer().weight.shape[1 if arch == "bert" else 0])
    w = layer.get_base_layer().weight.detach()
    delta = layer.lora_B["default"].weight @ layer.lora_A["default"].weight * layer.scaling["default"]
    mask = layer.base_mask()
    w_oi, mask_oi = (w, mask) if arch == "bert" else (w.T, mask.T)
    bias = layer.get_base_layer().bias
    expected = x @ (w_oi + delta * mask_oi).T + bias
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-5)
    # merge: peft's own merge_and_unload keeps every zero
    before = logits(peft_model, arch)
    merged = peft_model.merge_and_unload()
    assert pruned_nonzero(merged, masks) == 0
    assert (logits(merged, arch) - before).abs().max() <= 1e-5


def test_plain_lora_fills_pruned_weights():
    """The bug the masked layers prevent, shown by the same check: plain LoRA's merge fills pruned positions."""
    model = make_tiny("bert")
    masks = random_masks(model)
    owner = MaskSet(find_targets(model))
    owner.set_masks(masks)
    plain = get_peft_model(model, LoraConfig(target_modules=["query"], r=2, init_lora_weights=False))
    merged = plain.merge_and_unload()
    assert pruned_nonzero(merged, masks) > 0


def test_masked_low_rank_gradients_match_autograd():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    a = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(4, 6) < 0.5
    out = MaskedLowRank.apply(x, a, b, mask, 0.7)
    reference = x @ ((b @ a) * 0.7 * mask).T
    torch.testing.assert_close(out, reference)
    grad = torch.randn_like(out)
    mine = torch.autograd.grad(out, (x, a, b), grad)
    theirs = torch.autograd.grad(reference, (x, a, b), grad)
    for m, t in zip(mine, theirs):
        torch.testing.assert_close(m, t)
    assert torch.autograd.gradcheck(lambda x_, a_, b_: MaskedLowRank.apply(x_, a_, b_, mask, 0.7), (x, a, b))


@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_masked_linear_matches_autograd(with_bias):
    """The fused product and its hand-written backward equal autograd through the explicit masked sum."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 6, dtype=torch.float64)
    mask = torch.rand(4, 6) < 0.5
    w = w * mask
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True) if with_bias else None
    a = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    out = FusedMaskedLoraLinear.apply(x, w, bias, a, b, mask, 0.7)
    reference = torch.nn.functional.linear(x, w + (b @ a) * 0.7 * mask, bias)
    torch.testing.assert_close(out, reference)
    inputs = (x, a, b) + ((bias,) if with_bias else ())
    grad = torch.randn_like(out)
    for m, t in zip(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(reference, inputs, grad)):
        torch.testing.assert_close(m, t)
    assert torch.autograd.gradcheck(
        lambda x_, a_, b_: FusedMaskedLoraLinear.apply(x_, w, bias.detach() if with_bias else None, a_, b_, mask,
                                                       0.7), (x, a, b))
    # an input from frozen layers (no gradient wanted): the adapters' gradients are the same
    frozen_x = x.detach()
    out = FusedMaskedLoraLinear.apply(frozen_x, w, None, a, b, mask, 0.7)
    reference = torch.nn.functional.linear(frozen_x, w + (b @ a) * 0.7 * mask)
    for m, t in zip(torch.autograd.grad(out, (a, b), grad), torch.autograd.grad(reference, (a, b), grad)):
        torch.testing.assert_close(m, t)


@pytest.mark.parametrize("fused", [True, False])
def test_straight_through_gradient_is_the_unmasked_updates(fused):
    """`--adapter_gradient straight_through`: the forward pass stays masked (the same output, the same input
    gradient) while A and B get the gradient of the unmasked update, computed low-rank."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(4, 6) < 0.5
    w = torch.randn(4, 6, dtype=torch.float64) * mask
    a = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    if fused:
        out = FusedMaskedLoraLinear.apply(x, w, None, a, b, mask, 0.7, True)
    else:
        out = torch.nn.functional.linear(x, w) + MaskedLowRank.apply(x, a, b, mask, 0.7, True)
    masked = torch.nn.functional.linear(x, w + (b @ a) * 0.7 * mask)
    unmasked = torch.nn.functional.linear(x, w + (b @ a) * 0.7)
    torch.testing.assert_close(out, masked)
    grad = torch.randn_like(out)
    gx, ga, gb = torch.autograd.grad(out, (x, a, b), grad)
    torch.testing.assert_close(gx, torch.autograd.grad(masked, x, grad, retain_graph=True)[0])
    ref_a, ref_b = torch.autograd.grad(unmasked, (a, b), grad)
    torch.testing.assert_close(ga, ref_a)
    torch.testing.assert_close(gb, ref_b)
    exact_a = torch.autograd.grad(masked, a, grad)[0]
    assert not torch.allclose(ga, exact_a), "the straight-through gradient must differ from the exact one"


def test_straight_through_training_keeps_exact_zeros(tmp_path):
    trainer = lora_trainer("bert", lora_args(tmp_path, "gmp", 0.59, adapter_gradient="straight_through",
                                             gmp_start=0.0, gmp_end=0.5, prune_frequency=2))
    layers = [m for m in trainer.model.modules() if isinstance(m, SparseLoraLinear)]
    assert layers and all(m.straight_through for m in layers)
    trainer.train()
    assert pruned_leaks(trainer) == []
    before = logits(trainer.model, "bert")
    merged = merged_copy(trainer.model)
    assert pruned_nonzero(merged, trainer.masks.masks) == 0
    assert (logits(merged, "bert") - before).abs().max().item() <= 1e-5
    assert trainer.adapter_metadata()["adapter_gradient"] == "straight_through"


@pytest.mark.parametrize("overrides, message", [
    (dict(adapter_gradient="ste"), "--adapter_gradient must be one of exact, straight_through; got 'ste'"),
    (dict(adapter_gradient="straight_through", sparse_adapter=False), "is a choice for the masked adapters"),
])
def test_adapter_gradient_bad_values_are_refused(tmp_path, overrides, message):
    with pytest.raises(UsageError, match=message):
        lora_args(tmp_path, "omp_before", 0.5, **overrides)


def _sparse_lora_layer(arch: str, dropout: float = 0.0):
    torch.manual_seed(0)
    model = make_tiny(arch)
    masks = random_masks(model)
    config = sparse_lora_config(LoraConfig(target_modules=LORA_TARGETS[arch][:1], r=2, init_lora_weights=False,
                                           lora_dropout=dropout, fan_in_fan_out=arch == "gpt2"))
    peft_model = get_peft_model(model, config)
    owner = MaskSet(find_targets(peft_model))
    owner.set_masks(masks)
    owner.apply_to_weights()
    bind_masks(peft_model, owner)
    layer = next(m for m in peft_model.modules() if isinstance(m, SparseLoraLinear))
    fan_in = layer.get_base_layer().weight.shape[1 if arch == "bert" else 0]
    return layer, torch.randn(3, 7, fan_in, requires_grad=True)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_fused_layer_equals_peft_forward_and_gradients(arch):
    """`SparseLoraLinear` fuses the masked update into the base product in training; outputs and the gradients of
    x, A and B equal peft's own path (base layer, then `MaskedLoraVariant`), for Linear and Conv1D layouts."""
    layer, x = _sparse_lora_layer(arch)
    layer.train()
    fused = layer(x)
    assert type(fused.grad_fn).__name__ == "FusedMaskedLoraLinearBackward"
    unfused = super(SparseLoraLinear, layer).forward(x)  # peft's Linear.forward
    assert type(unfused.grad_fn).__name__ != "FusedMaskedLoraLinearBackward"
    torch.testing.assert_close(fused, unfused, atol=1e-5, rtol=1e-5)
    params = (x, layer.lora_A["default"].weight, layer.lora_B["default"].weight)
    grad = torch.randn_like(fused)
    for m, t in zip(torch.autograd.grad(fused, params, grad), torch.autograd.grad(unfused, params, grad)):
        torch.testing.assert_close(m, t, atol=1e-5, rtol=1e-4)


def test_fused_path_is_left_where_it_would_change_the_function():
    """Adapter dropout in training, hooks on the base layer, a trainable base weight, a merged or disabled
    adapter: peft's forward runs instead."""
    layer, x = _sparse_lora_layer("bert", dropout=0.5)
    layer.train()
    assert type(layer(x).grad_fn).__name__ != "FusedMaskedLoraLinearBackward"
    layer.eval()  # dropout is the identity in eval
    assert type(layer(x).grad_fn).__name__ == "FusedMaskedLoraLinearBackward"
    handle = layer.get_base_layer().register_forward_hook(lambda *_: None)
    assert type(layer(x).grad_fn).__name__ != "FusedMaskedLoraLinearBackward"
    handle.remove()
    layer.get_base_layer().weight.requires_grad_(True)
    assert type(layer(x).grad_fn).__name__ != "FusedMaskedLoraLinearBackward"
    layer.get_base_layer().weight.requires_grad_(False)
    layer.enable_adapters(False)
    assert type(layer(x).grad_fn).__name__ != "FusedMaskedLoraLinearBackward"
    layer.enable_adapters(True)
    layer.merge()
    assert type(layer(x).grad_fn).__name__ != "FusedMaskedLoraLinearBackward"


def test_fused_layer_under_bf16_autocast_computes_in_bf16():
    """Under autocast the fused product runs in autocast's dtype, as the base layer would, and stays close to
    the fp32 result; the adapters' gradients come back in their own fp32."""
    layer, x = _sparse_lora_layer("bert")
    layer.train()
    reference = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, atol=0.1, rtol=0.05)
    out.float().sum().backward()
    assert layer.lora_A["default"].weight.grad.dtype == torch.float32


# ---- targets see through adapters ------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["bert", "gpt2", "roberta", "esm", "t5"])
def test_targets_see_through_adapters(arch):
    model = make_tiny(arch)
    plain = [(t.name, t.group, tuple(t.param.shape)) for t in find_targets(model)]
    args = sparse_args("/tmp/unused", "omp_before", 0.5, peft="lora")
    from smc_trainer.training.adapters import wrap_with_lora

    peft_model = wrap_with_lora(model, args)
    seen = find_targets(peft_model)
    assert [(t.name, t.group, tuple(t.param.shape)) for t in seen] == plain
    lora_params = {id(p) for n, p in peft_model.named_parameters() if "lora_" in n or "original_module" in n}
    assert not any(id(t.param) in lora_params for t in seen)
    head = [t for t in seen if t.group == "head"]
    assert all(t.param.requires_grad for t in head), "the task head is trained fully (modules_to_save)"
    assert not any(t.param.requires_grad for t in seen if t.group != "head"), "the base is frozen"


# ---- training: every method that runs on a frozen base -----------------------------------------------------


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
@pytest.mark.parametrize("method", FROZEN_OK)
def test_every_method_merges_with_exact_sparsity(tmp_path, arch, method):
    sparsity = 0.0 if method == "dense" else 0.59
    trainer = lora_trainer(arch, lora_args(tmp_path, method, sparsity))
    trainer.train()
    model = trainer.model
    assert pruned_leaks(trainer) == []
    masks = trainer.masks.masks
    if method != "dense":
        kept = sum(int(m.sum()) for m in masks.values())
        assert kept == keep_count(1 - sparsity, trainer.masks.total)
    trained = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert any(bool(p.detach().abs().sum() > 0) for p in trained), "the adapters never trained"
    before = logits(model, arch)
    merged = merged_copy(model)
    assert pruned_nonzero(merged, masks) == 0
    assert (logits(merged, arch) - before).abs().max().item() <= 1e-5
    # peft's own merge_and_unload on the trained model itself, too
    unloaded = model.merge_and_unload()
    assert pruned_nonzero(unloaded, masks) == 0


@pytest.mark.parametrize("method", REFUSED)
def test_methods_that_train_the_base_are_refused_at_parse_time(tmp_path, method):
    with pytest.raises(UsageError, match=rf"--sparse_method {method}\)? cannot run with --peft lora"):
        lora_args(tmp_path, method, 0.488)


def test_user_built_peft_model_with_a_refused_method(tmp_path):
    model = get_peft_model(make_tiny("bert"), sparse_lora_config(LoraConfig(target_modules=["query"], r=2)))
    with pytest.raises(UsageError, match="frozen base"):
        SparseTrainer(model=model, args=sparse_args(tmp_path, "rigl", 0.5), train_dataset=toy_dataset())


def test_gmp_prunes_the_frozen_base_on_schedule(tmp_path):
    args = lora_args(tmp_path, "gmp", 0.59, max_steps=8, gmp_start=0.0, gmp_end=0.5, prune_frequency=2)
    trainer = lora_trainer("bert", args)
    trainer.train()
    events = [e for e in trainer.sparsity_callback.events if e["kind"] == "update"]
    assert len(events) >= 2 and events[-1]["mask_sparsity"] == pytest.approx(0.59, abs=1e-3)
    assert pruned_nonzero(merged_copy(trainer.model), trainer.masks.masks) == 0


def test_plain_lora_then_remask(tmp_path):
    """--sparse_adapter false: training sees the unmasked adapter; after training the adapters are merged and
    re-masked, so evaluation and the release are exactly sparse."""
    trainer = lora_trainer("bert", lora_args(tmp_path, "omp_before", 0.59, sparse_adapter=False))
    assert not any(isinstance(m, SparseLoraLinear) for m in trainer.model.modules())
    trainer.train()
    assert pruned_nonzero(trainer.model.get_base_model(), trainer.masks.masks) == 0
    assert pruned_nonzero(merged_copy(trainer.model), trainer.masks.masks) == 0


def test_user_peft_model_gets_the_same_behaviour(tmp_path):
    model = get_peft_model(make_tiny("bert"), sparse_lora_config(LoraConfig(
        target_modules=["query", "value"], modules_to_save=["classifier"], r=2)))
    trainer = SparseTrainer(model=model, args=sparse_args(tmp_path, "omp_before", 0.59, max_steps=4),
                            train_dataset=toy_dataset())
    trainer.train()
    assert pruned_nonzero(model.merge_and_unload(), trainer.masks.masks) == 0


def test_user_peft_model_with_plain_lora_layers_is_converted(tmp_path):
    """A plain-LoRA PeftModel is converted to masked layers (tests/training/test_user_peft_model.py has the rest);
    with --sparse_adapter false it stays plain, re-masked after the merge."""
    plain = get_peft_model(make_tiny("bert"), LoraConfig(target_modules=["query"], r=2))
    SparseTrainer(model=plain, args=sparse_args(tmp_path, "omp_before", 0.5, sparse_adapter=False, peft="lora"),
                  train_dataset=toy_dataset())
    assert not any(isinstance(m, SparseLoraLinear) for m in plain.modules())
    trainer = SparseTrainer(model=plain, args=sparse_args(tmp_path, "omp_before", 0.5), train_dataset=toy_dataset())
    layers = [m for m in trainer.model.modules() if isinstance(m, SparseLoraLinear)]
    assert len(layers) == 2 and all(m.mask_ref is not None for m in layers)


# ---- masks between LoRA runs and plain models ---------------------------------------------------------------


def test_masks_of_a_lora_run_load_onto_the_plain_model_and_back(tmp_path):
    trainer = lora_trainer("bert", lora_args(tmp_path, "omp_before", 0.59, max_steps=2))
    trainer.train()
    trainer.masks.save(str(tmp_path / "lora_masks"))
    plain = MaskSet(find_targets(make_tiny("bert")))
    assert plain.load(str(tmp_path / "lora_masks"))
    assert all(torch.equal(plain.masks[n], m.cpu()) for n, m in trainer.masks.masks.items())
    # and a plain model's masks start a LoRA run
    masks = random_masks(make_tiny("bert"), density=0.3)
    again = SparseTrainer(model=make_tiny("bert"), args=lora_args(tmp_path / "b", "omp_before", 0.7, max_steps=2),
                          train_dataset=toy_dataset(), initial_masks=masks)
    again.train()
    assert all(torch.equal(again.masks.masks[n], masks[n]) for n in masks)
    assert pruned_nonzero(merged_copy(again.model), masks) == 0


# ---- bad input -------------------------------------------------------------------------------------------


def test_lora_flags_without_peft_lora_are_refused(tmp_path):
    with pytest.raises(UsageError, match="--lora_r 4 configure LoRA, which is off"):
        sparse_args(tmp_path, "omp_before", 0.5, lora_r=4)
    with pytest.raises(UsageError, match="--peft must be one of none, lora; got 'qlora'"):
        sparse_args(tmp_path, "omp_before", 0.5, peft="qlora")
    with pytest.raises(UsageError, match="--lora_release adapter needs --sparse_adapter true"):
        sparse_args(tmp_path, "omp_before", 0.5, peft="lora", lora_release="adapter", sparse_adapter=False)


def test_target_modules_that_match_nothing_name_the_modules(tmp_path):
    args = lora_args(tmp_path, "omp_before", 0.5, lora_target_modules="q_proj")
    with pytest.raises(UsageError, match=r"'q_proj' matches no Linear/Conv1D.*named dense, key, query, value"):
        lora_trainer("bert", args)


def test_adapter_release_on_an_incompatible_base_is_refused_untouched(tmp_path):
    trainer = lora_trainer("bert", lora_args(tmp_path, "omp_before", 0.59, max_steps=2, lora_release="adapter"))
    trainer.train()
    trainer.save_model(str(tmp_path / "release"))
    from transformers import BertConfig, BertForSequenceClassification

    other = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=24, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=32,
                                                     max_position_embeddings=40))
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(UsageError, match="is not the adapter's sparse base"):
        load_sparse_adapter(other, str(tmp_path / "release"))
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items()), "the base was changed"


# ---- releases --------------------------------------------------------------------------------------------


def test_adapter_release_round_trip_through_peft_from_pretrained(tmp_path):
    from smc_trainer.release.hub import write_release_files

    trainer = lora_trainer("bert", lora_args(tmp_path, "omp_before", 0.59, lora_release="adapter"))
    trainer.train()
    out = str(tmp_path / "adapter")
    trainer.save_model(out)
    write_release_files(out, trainer.masks, trainer.sparsity_metadata())
    files = set(os.listdir(out))
    assert {"adapter_config.json", "adapter_model.safetensors", MASKS_NAME, "README.md"} <= files
    assert "config.json" not in files and "model.safetensors" not in files
    card = Path(out, "README.md").read_text(encoding="utf-8")
    assert "load_sparse_adapter" in card and "the adapter alone" in card
    from smc_trainer.release.hub import is_sparse_release

    assert is_sparse_release(out), "an adapter release must push like every release"
    expected = logits(trainer.model, "bert")
    loaded = load_sparse_adapter(make_tiny("bert"), out)  # the pretrained base, pruned by the release's masks
    assert isinstance(loaded, PeftModel)
    assert (logits(loaded, "bert") - expected).abs().max().item() <= 1e-5
    masks = load_file(os.path.join(out, MASKS_NAME))
    merged = loaded.merge_and_unload()
    assert pruned_nonzero(merged, masks) == 0
    assert (logits(merged, "bert") - expected).abs().max().item() <= 1e-5


def test_merged_release_loads_with_from_pretrained(tmp_path):
    from transformers import BertForSequenceClassification

    from smc_trainer.release.hub import load_sparse_pretrained

    trainer = lora_trainer("bert", lora_args(tmp_path, "omp_before", 0.59))
    trainer.train()
    out = str(tmp_path / "merged")
    trainer.save_sparse_pretrained(out)
    assert "adapter_config.json" not in os.listdir(out)
    model = BertForSequenceClassification.from_pretrained(out)
    assert pruned_nonzero(model, trainer.masks.masks) == 0
    assert (logits(model, "bert") - logits(trainer.model, "bert")).abs().max().item() <= 1e-5
    ckpt = load_sparse_pretrained(out)  # checks that every pruned weight is zero
    assert ckpt.report["adapter"]["release"] == "merged"
    sparsity = json.loads(Path(out, "config.json").read_text(encoding="utf-8"))["sparsity"]
    assert sparsity["adapter"]["peft"] == "lora" and sparsity["adapter"]["sparse_adapter"] is True
    assert sparsity["adapter"]["adapted_modules"] == 2 * 6 + 1  # q, k, v, o, ffn in, ffn out per layer; pooler
    assert sparsity["achieved_sparsity"] >= 0.59 - 1e-3


def test_bf16_mixed_precision_keeps_exact_zeros(tmp_path):
    """Mixed precision as for full fine-tuning: the masked update runs in the input's dtype under autocast."""
    trainer = lora_trainer("bert", lora_args(tmp_path, "gmp", 0.59, bf16=True, gmp_start=0.0, gmp_end=0.5,
                                             prune_frequency=2))
    trainer.train()
    assert pruned_leaks(trainer) == []
    assert pruned_nonzero(merged_copy(trainer.model), trainer.masks.masks) == 0


# ---- pipelines -------------------------------------------------------------------------------------------


def _pipeline_config(tmp_path, out: str, *extra: str):
    from smc_trainer.runs.config import parse_run_config

    return parse_run_config([
        "--model_name_or_path", "tiny", "--max_steps", "3", "--num_synthetic_examples", "48",
        "--max_eval_samples", "16", "--per_device_train_batch_size", "8", "--learning_rate", "1e-2",
        "--dense_cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / out),
        "--sparse_method", "omp_after", "--sparsity", "0.59", "--report_to", "none", "--disable_tqdm", "true",
        "--log_level", "warning", "--use_cpu", *extra,
    ])


def test_after_method_recovers_the_shared_full_dense_fine_tune_with_lora(tmp_path):
    from smc_trainer.release.hub import load_sparse_pretrained
    from smc_trainer.runs import pipeline

    full = pipeline.run(_pipeline_config(tmp_path, "full"))[0]
    lora = pipeline.run(_pipeline_config(tmp_path, "lora", "--peft", "lora", "--lora_r", "4",
                                         "--lora_learning_rate", "3e-2"))[0]
    entries = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(entries) == 1, "the LoRA run must reuse the full dense fine-tune, not train its own"
    assert full.mask_sparsity == lora.mask_sparsity == pytest.approx(0.59, abs=1e-3)
    assert lora.measured_sparsity >= lora.mask_sparsity
    masks = load_file(os.path.join(lora.output_dir, MASKS_NAME))
    assert masks.keys() == load_file(os.path.join(full.output_dir, MASKS_NAME)).keys()
    model = load_sparse_pretrained(lora.output_dir).model  # the merged release, with its config's class
    assert pruned_nonzero(model, masks) == 0
    sparsity = json.loads(Path(lora.output_dir, "config.json").read_text(encoding="utf-8"))["sparsity"]
    assert sparsity["adapter"]["base"] == str(entries[0])
    state = json.loads(Path(lora.output_dir, "trainer_state.json").read_text(encoding="utf-8"))
    rates = [e["learning_rate"] for e in state["log_history"] if "learning_rate" in e]
    assert not rates or max(rates) > 1e-2, "the adapters trained at --lora_learning_rate"


def test_cli_refuses_lth_with_lora_before_loading_anything(tmp_path):
    with pytest.raises(UsageError, match="--sparse_method lth cannot run with --peft lora: LTH rewinds"):
        _pipeline_config(tmp_path, "x", "--peft", "lora", "--sparse_method", "lth")
