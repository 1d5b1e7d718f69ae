"""Skipping the weight re-mask after optimizer steps is safe, bit for bit, and guarded.

`MaskSet.after_optimizer_step` skips `apply_to_weights` for SGD/Adam/AdamW when gradients were masked
and the optimizer state was zeroed at pruned positions (`smc_trainer.engine.zero_preserving` has the math).
These tests train the same tiny model twice, once skipping and once re-masking every step, and
require identical bits of weights and optimizer state after every step, with every pruned weight
exactly zero. Optimizers outside the proof, eps = 0, unmasked gradients and an optimizer whose state
was never zeroed are re-masked; a state corrupted behind the MaskSet's back is caught by the
periodic check, which re-masks and stops skipping.
"""

from __future__ import annotations

import pytest
import torch
from sparse_helpers import make_trainer, sparse_args, train_with_recorder

from smc_trainer import MaskSet, find_targets
from smc_trainer.engine.zero_preserving import unwrap_optimizer, why_not_zero_preserving

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.1),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam_coupled_wd": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1),
    "adam_amsgrad_foreach": lambda p: torch.optim.Adam(p, lr=0.01, amsgrad=True, foreach=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1, foreach=False),
    "adamw_maximize": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1, maximize=True),
    "adamw_fused": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1, fused=True),
}


def tiny(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Embedding(13, 8), torch.nn.Linear(8, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 3)).to(dtype)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def run(make_opt, steps: int, skip: bool, dtype: torch.dtype = torch.float32, new_masks_at: int = 3):
    """Train `steps` steps the way SparseTrainer does; return the model, optimizer, MaskSet and whether each step
    re-masked. Masks change once (at `new_masks_at`, with the optimizer) so regrown weights and reset state occur."""
    model = tiny(dtype=dtype)
    targets = find_targets(model)
    masks = MaskSet(targets, verify_every=100 if skip else 0)
    opt = make_opt(list(model.parameters()))
    gen = torch.Generator().manual_seed(1)

    def random_masks():
        return {t.name: torch.rand(t.param.shape, generator=gen) < 0.5 for t in targets}

    masks.set_masks(random_masks(), opt)
    remasked = []
    for step in range(steps):
        x = torch.randint(0, 13, (6, 5), generator=gen)
        out = model[3](model[2](model[1](model[0](x)))).float().pow(2).mean()
        out.backward()
        masks.apply_to_grads()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        remasked.append(masks.after_optimizer_step(opt))
        assert masks.pruned_nonzero() == [], step  # invariant 1, after every step
        if step == new_masks_at:
            masks.set_masks(random_masks(), opt)
        opt.zero_grad(set_to_none=True)
    return model, opt, masks, remasked


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_skipping_is_bit_identical_to_remasking(name):
    model_a, opt_a, masks_a, remasked_a = run(OPTIMIZERS[name], 8, skip=True)
    model_b, opt_b, masks_b, remasked_b = run(OPTIMIZERS[name], 8, skip=False)
    assert not any(remasked_a) and masks_a.skipped_steps == 8, "the zero-preserving step was not skipped"
    assert all(remasked_b) and masks_b.skipped_steps == 0
    for (n, pa), pb in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.equal(bits(pa), bits(pb)), n
        for key, va in opt_a.state[pa].items():
            vb = opt_b.state[pb][key]
            assert torch.equal(bits(va), bits(vb)) if torch.is_tensor(va) else va == vb, (n, key)


def test_bfloat16_weights_keep_pruned_zeros_when_skipping():
    model, _, masks, remasked = run(OPTIMIZERS["adamw"], 6, skip=True, dtype=torch.bfloat16)
    assert not any(remasked) and masks.pruned_nonzero() == []


class DriftingAdamW(torch.optim.AdamW):
    """An AdamW subclass whose step also nudges every weight: outside the proof, so it must be re-masked."""

    @torch.no_grad()
    def step(self, closure=None):
        out = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(1e-3)
        return out


@pytest.mark.parametrize("make_opt", [lambda p: DriftingAdamW(p, lr=0.01), lambda p: torch.optim.RMSprop(p, lr=0.01),
                                      lambda p: torch.optim.Adam(p, lr=0.01, eps=0.0)],
                         ids=["subclass", "rmsprop", "adam_eps0"])
def test_optimizers_outside_the_proof_are_remasked_every_step(make_opt):
    model = tiny()
    opt = make_opt(list(model.parameters()))
    assert why_not_zero_preserving(opt, model.parameters()) is not None
    if isinstance(opt, DriftingAdamW):  # the drift would leak if the step were skipped: run() checks every step
        _, _, masks, remasked = run(make_opt, 5, skip=True)
        assert all(remasked) and masks.skipped_steps == 0


def test_unmasked_gradients_or_unreset_state_are_remasked():
    model = tiny()
    targets = find_targets(model)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    masks = MaskSet(targets)
    masks.set_masks({t.name: torch.rand(t.param.shape) < 0.5 for t in targets})  # no optimizer: state not known clean
    for t in targets:
        t.param.grad = torch.ones_like(t.param)
    masks.apply_to_grads()
    assert masks.after_optimizer_step(opt) is True  # this optimizer's state was never zeroed by set_masks
    masks.set_masks(masks.masks, opt)
    for t in targets:
        t.param.grad = torch.ones_like(t.param)
    assert masks.after_optimizer_step(opt) is True  # gradients were not masked since the last step
    masks.apply_to_grads()
    assert masks.after_optimizer_step(opt) is False
    assert masks.after_optimizer_step(torch.optim.AdamW(model.parameters())) is True  # another optimizer


def test_corrupted_state_is_caught_by_the_periodic_check(monkeypatch):
    from smc_trainer.engine import masks as masks_module

    warnings: list[str] = []
    monkeypatch.setattr(masks_module.logger, "warning", lambda message, *a, **k: warnings.append(message))
    model = tiny()
    targets = find_targets(model)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    masks = MaskSet(targets, verify_every=3)
    masks.set_masks({t.name: torch.rand(t.param.shape) < 0.5 for t in targets}, opt)
    leaking = targets[1]
    results = []
    for step in range(6):
        model[3](model[2](model[1](model[0](torch.randint(0, 13, (4, 5)))))).sum().backward()
        masks.apply_to_grads()
        opt.step()
        if step == 0:  # behind the MaskSet's back: a moment at a pruned position
            opt.state[leaking.param]["exp_avg"][~masks.masks[leaking.name]] = 1.0
        results.append(masks.after_optimizer_step(opt))
        opt.zero_grad()
    # skipped until the third skipped step found the leak; from then on re-masked every step
    assert results == [False, False, True, True, True, True]
    assert masks.verify_every == 0 and masks.pruned_nonzero() == []
    assert len(warnings) == 1 and leaking.name in warnings[0]


def test_unwrap_finds_the_torch_optimizer_inside_wrappers():
    class Wrapper:  # like accelerate's AcceleratedOptimizer (the Trainer test below goes through the real one)
        def __init__(self, optimizer):
            self.optimizer = optimizer

    inner = torch.optim.AdamW(tiny().parameters())
    assert unwrap_optimizer(Wrapper(Wrapper(inner))) is inner
    assert unwrap_optimizer(inner) is inner
    assert why_not_zero_preserving(Wrapper(inner), []) is None


def test_sparse_trainer_skips_the_remask_and_keeps_invariant_1(tmp_path):
    """Through the real Trainer (AdamW behind accelerate's wrapper): skipped on every step, and no pruned weight or
    moment is ever non-zero (checked after every step by the recorder)."""
    trainer = make_trainer("bert", sparse_args(tmp_path, "omp_before", 0.5))
    rec = train_with_recorder(trainer)
    assert rec.leaks == []
    assert trainer.masks.skipped_steps == trainer.state.global_step == 8


def test_resumed_run_skips_too_and_equals_the_uninterrupted_run(tmp_path):
    """On resume the masks are re-installed for the loaded optimizer (its state zeroed at pruned positions), so the
    resumed steps skip the re-mask as well, and end bit-identical to the uninterrupted run."""
    steps = dict(max_steps=6, save_strategy="steps", save_steps=3, gradient_accumulation_steps=1)
    full = make_trainer("bert", sparse_args(tmp_path, "omp_before", 0.5, **steps))
    full.train()
    resumed = make_trainer("bert", sparse_args(tmp_path, "omp_before", 0.5, **steps))
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    assert full.masks.skipped_steps == 6 and resumed.masks.skipped_steps == 3
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(bits(a), bits(b)), name
