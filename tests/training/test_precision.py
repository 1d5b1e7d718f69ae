"""Mixed precision: masks act on the fp32 weights the optimizer updates (invariant 1), and an fp16 step the
grad scaler skips moves neither a schedule nor a mask (DESIGN "Pitfalls").

bf16 autocast runs natively on CPU. accelerate ignores `--fp16` on CPU, so the fp16 tests install what it
sets up on a GPU (fp16 autocast around forward and a `GradScaler`) and inject an inf gradient at a pruned
position of one weight during one chosen optimizer step; the real scaler then skips that step. fp16 on a
GPU itself is not exercised here.
"""

from __future__ import annotations

import pytest
import torch
from sparse_helpers import StepRecorder, make_trainer, sparse_args

from smc_trainer.engine.selection import keep_count

SKIP_AT = 3  # the (1-based) optimizer step whose gradients get an inf


def emulate_fp16_amp(trainer, init_scale: float = 2.0**12) -> None:
    """What accelerate sets up for `--fp16` on a GPU, on CPU: autocast(float16) around forward, and a GradScaler
    that scales the loss, unscales before clipping and skips steps with inf/NaN gradients."""
    trainer.accelerator.native_amp = True
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=10**6)


class AmpRecorder(StepRecorder):
    """StepRecorder plus, per optimizer step: the schedule position, all weights, and the dtypes seen."""

    def __init__(self, trainer, probe: torch.nn.Module):
        super().__init__(trainer)
        self.sparse_steps: list[int] = []
        self.weights: list[dict[str, torch.Tensor]] = []
        self.activation_dtypes: set[torch.dtype] = set()
        self.grad_dtypes: set[torch.dtype] = set()
        probe.register_forward_hook(lambda m, i, out: self.activation_dtypes.add(out.dtype))

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.trainer.model.named_parameters()}

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        self.weights.append(self._snapshot())

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.grad_dtypes |= {t.param.grad.dtype for t in self.trainer.masks.targets if t.param.grad is not None}

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        self.sparse_steps.append(self.trainer.sparsity_callback.step)
        self.weights.append(self._snapshot())


def inject_inf_at_pruned_position(trainer, at_step: int) -> dict:
    """During the backward passes of optimizer step `at_step`, one gradient entry of the last prunable weight
    becomes inf, at a position its current mask prunes (the position RigL would grow first if it grew)."""
    target = trainer.masks.targets[-1]
    planted: dict = {"name": target.name}

    def hook(grad: torch.Tensor) -> torch.Tensor:
        if trainer.state.global_step != at_step - 1:
            return grad
        pruned = (~trainer.masks.masks[target.name]).reshape(-1).nonzero()
        planted["index"] = int(pruned[0])
        grad = grad.clone()
        grad.view(-1)[planted["index"]] = float("inf")
        return grad

    target.param.register_hook(hook)
    return planted


def trained_with_fp16_skip(tmp_path, method: str, optim: str, **overrides):
    args = sparse_args(tmp_path, method, 0.59, fp16=True, optim=optim, max_steps=8, gradient_accumulation_steps=2,
                       prune_frequency=1, gmp_start=0.0, gmp_end=0.5, rigl_update_interval=1, rigl_update_end=1.0,
                       **overrides)
    trainer = make_trainer("bert", args)
    emulate_fp16_amp(trainer)
    planted = inject_inf_at_pruned_position(trainer, SKIP_AT)
    recorder = AmpRecorder(trainer, trainer.model.bert.encoder.layer[0].intermediate.dense)
    trainer.add_callback(recorder)
    return trainer, recorder, planted


def assert_masks_act_on_fp32_optimizer_tensors(trainer) -> None:
    """The masked tensors are the very fp32 tensors the optimizer updates: no other master copy exists."""
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(t.param) in optimized for t in trainer.masks.targets)
    assert {t.param.dtype for t in trainer.masks.targets} == {torch.float32}
    for t in trainer.masks.targets:
        state = trainer.optimizer.state[t.param]
        assert {v.dtype for v in state.values() if torch.is_tensor(v) and v.shape == t.param.shape} == {torch.float32}


@pytest.mark.parametrize("method,optim", [("gmp", "adamw_torch_fused"), ("rigl", "adamw_torch_fused"),
                                          ("rigl", "adamw_torch")])
def test_skipped_fp16_step_moves_neither_schedule_nor_masks(tmp_path, method, optim):
    trainer, rec, planted = trained_with_fp16_skip(tmp_path, method, optim)
    trainer.train()
    # the scaler really skipped step SKIP_AT and only it: the weights did not move, the schedule did not count it
    assert trainer.accelerator.scaler.get_scale() == 2.0**11
    assert rec.sparse_steps == [s - (s >= SKIP_AT) for s in range(1, 9)]
    for s in range(1, 9):
        moved = any(not torch.equal(rec.weights[s][n], rec.weights[s - 1][n]) for n in rec.weights[s])
        assert moved == (s != SKIP_AT), f"step {s}: weights moved={moved}"
    assert all(torch.equal(rec.masks[SKIP_AT][n], rec.masks[SKIP_AT - 1][n]) for n in rec.masks[SKIP_AT])
    total = trainer.masks.total
    if method == "gmp":  # the cubic ramp is a function of the steps that really happened
        schedule = trainer.sparse_method.schedule(trainer.state.max_steps)
        for counts, done in zip(rec.counts, rec.sparse_steps):
            kept = sum(counts.values()) if counts else total
            assert kept == keep_count(1.0 - schedule.sparsity_after(done), total)
    else:  # RigL kept updating on the other steps, never on the inf step
        assert any(not torch.equal(rec.masks[s][n], rec.masks[s - 1][n]) for s in (2, 4) for n in rec.masks[s])
    assert sum(rec.counts[-1].values()) == keep_count(0.41, total)
    assert rec.leaks == [], f"pruned weights or Adam moments became non-zero: {rec.leaks[:3]}"
    assert rec.activation_dtypes == {torch.float16} and rec.grad_dtypes == {torch.float32}
    assert_masks_act_on_fp32_optimizer_tensors(trainer)
    assert "index" in planted


def test_rigl_would_grow_on_the_inf_gradient_if_the_skip_went_unseen(tmp_path):
    """Guard for the guard: trusting accelerate's flag alone (blind to fused AdamW skips) lets RigL grow the inf."""
    trainer, rec, planted = trained_with_fp16_skip(tmp_path, "rigl", "adamw_torch_fused")
    trainer.sparsity_callback.step_was_skipped = lambda: bool(trainer.accelerator.optimizer_step_was_skipped)
    trainer.train()
    assert rec.sparse_steps[SKIP_AT - 1] == SKIP_AT  # the skipped step was counted
    grown = rec.masks[SKIP_AT][planted["name"]].reshape(-1)[planted["index"]]
    assert bool(grown), "RigL did not grow the position whose gradient was inf"


def test_snip_refuses_non_finite_fp16_gradients(tmp_path):
    trainer, _, _ = trained_with_fp16_skip(tmp_path, "snip", "adamw_torch_fused")
    # SNIP has no mask yet: its scoring batches (before step 1) get inf gradients
    target = trainer.masks.targets[0].param
    target.register_hook(lambda g: torch.full_like(g, float("inf")) if trainer.state.global_step == 0 else g)
    with pytest.raises(FloatingPointError, match="SNIP gradients .* not finite"):
        trainer.train()


@pytest.mark.parametrize("method", ["rigl", "gmp", "snip"])
def test_bf16_autocast_keeps_invariants(tmp_path, method):
    """bf16 autocast under gradient accumulation: the forward runs in bf16, while masks, gradients and Adam
    state live on the fp32 weights; pruned weights are exactly zero after every optimizer step."""
    args = sparse_args(tmp_path, method, 0.59, bf16=True, max_steps=6, gradient_accumulation_steps=2,
                       prune_frequency=1, gmp_start=0.0, gmp_end=0.5, rigl_update_interval=2, rigl_init_method="snip")
    trainer = make_trainer("bert", args)
    rec = AmpRecorder(trainer, trainer.model.bert.encoder.layer[0].intermediate.dense)
    trainer.add_callback(rec)
    trainer.train()
    assert rec.activation_dtypes == {torch.bfloat16}, "autocast did not run the forward in bf16"
    assert rec.grad_dtypes == {torch.float32}
    assert_masks_act_on_fp32_optimizer_tensors(trainer)
    assert rec.sparse_steps == [1, 2, 3, 4, 5, 6]  # one schedule step per optimizer step, not per micro-batch
    assert rec.leaks == [], f"pruned weights or Adam moments became non-zero: {rec.leaks[:3]}"
    assert sum(rec.counts[-1].values()) == keep_count(0.41, trainer.masks.total)
    if method == "rigl":
        assert any(not torch.equal(rec.masks[-1][n], rec.masks[1][n]) for n in rec.masks[-1]), "RigL never moved"
