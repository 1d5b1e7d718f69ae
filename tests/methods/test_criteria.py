"""The criterion axis: oracle tests of oBERT and movement scores, the distillation loss, LR rewinding at pruning
events, valid and refused (method, criterion) pairs, and presets."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from sparse_helpers import make_trainer, sparse_args, train_with_recorder
from transformers import TrainerCallback

from smc_trainer.engine.criteria import ScoringView, criterion_names, get_criterion_class
from smc_trainer.engine.targets import PruneTarget
from smc_trainer.errors import UsageError
from smc_trainer.training.distillation import distillation_loss, kd_sum


def _targets(*shapes, seed=0) -> list[PruneTarget]:
    gen = torch.Generator().manual_seed(seed)
    return [PruneTarget(f"w{i}", torch.nn.Parameter(torch.randn(*s, generator=gen, dtype=torch.float64)), "layer_0")
            for i, s in enumerate(shapes)]


def _obert_args(**kw):
    base = dict(obert_block_size=4, obert_dampening=0.05, obert_num_grads=5, obert_update=True, obert_dtype="float64",
                fp16=False, seed=0)
    return SimpleNamespace(**{**base, **kw})


def _feeding(targets, grads):
    """A ScoringView whose gradient batches put grads[i][name] into .grad."""

    def batches(n):
        for g in grads[:n]:
            for t in targets:
                t.param.grad = g[t.name].clone()
            yield

    return ScoringView(targets, {}, 1, batches, count_batches_per_pass=lambda: len(grads))


def _dense_reference(w: torch.Tensor, gs: list[torch.Tensor], block: int, damp: float):
    """Explicit block-diagonal empirical Fisher of one flat weight, inverted densely (float64)."""
    n = w.numel()
    fisher = damp * torch.eye(n, dtype=torch.float64)
    for g in gs:
        fisher += torch.outer(g, g) / len(gs)
    same_block = (torch.arange(n)[:, None] // block) == (torch.arange(n)[None, :] // block)
    return torch.linalg.inv(fisher * same_block)


def test_obert_saliency_and_obs_update_equal_a_dense_reference():
    targets = _targets((3, 4), (2, 5))  # 12 values = 3 full blocks; 10 values = 2 blocks + a padded one
    gen = torch.Generator().manual_seed(1)
    grads = [{t.name: torch.randn(t.param.shape, generator=gen, dtype=torch.float64) for t in targets}
             for _ in range(5)]
    crit = get_criterion_class("obert").from_args(_obert_args())
    view = _feeding(targets, grads)
    scores = crit.scores(view)
    before = {t.name: t.param.detach().clone().reshape(-1) for t in targets}
    keep = {t.name: torch.rand(t.param.shape, generator=gen) > 0.5 for t in targets}
    crit.after_selection(view, keep)
    for t in targets:
        w = before[t.name]
        finv = _dense_reference(w, [g[t.name].reshape(-1) for g in grads], 4, 0.05)
        saliency = w**2 / (2 * finv.diagonal())
        got = scores[t.name].values(0, t.numel)
        torch.testing.assert_close(got.double(), saliency, rtol=1e-5, atol=1e-7)
        pruned = ~keep[t.name].reshape(-1)
        q = pruned.nonzero().squeeze(1)
        delta = -finv[:, q] @ torch.linalg.solve(finv[q][:, q], w[q])
        torch.testing.assert_close(t.param.detach().reshape(-1), w + delta, rtol=1e-9, atol=1e-9)
        assert float((w + delta)[pruned].abs().max()) < 1e-9  # the pruned set is removed exactly


def test_obert_block_size_one_is_the_diagonal_fisher_without_update():
    targets = _targets((4, 3))
    gen = torch.Generator().manual_seed(2)
    grads = [{"w0": torch.randn(4, 3, generator=gen, dtype=torch.float64)} for _ in range(3)]
    args = _obert_args(obert_block_size=1, obert_num_grads=0, obert_dampening=1e-7)
    crit = get_criterion_class("obert").from_args(args)
    view = _feeding(targets, grads)
    scores = crit.scores(view)  # num_grads 0: one full pass (3 batches)
    w = targets[0].param.detach().reshape(-1)
    fisher_diag = 1e-7 + sum(g["w0"].reshape(-1) ** 2 for g in grads) / 3
    torch.testing.assert_close(scores["w0"].values(0, 12).double(), w**2 * fisher_diag / 2, rtol=1e-5, atol=0)
    crit.after_selection(view, {"w0": torch.ones(4, 3, dtype=torch.bool)})
    assert torch.equal(targets[0].param.detach().reshape(-1), w)


def test_obert_lower_precision_store_is_close():
    targets = _targets((8, 8))
    gen = torch.Generator().manual_seed(3)
    grads = [{"w0": torch.randn(8, 8, generator=gen, dtype=torch.float64)} for _ in range(5)]
    exact = get_criterion_class("obert").from_args(_obert_args()).scores(_feeding(targets, grads))["w0"].values(0, 64)
    half = get_criterion_class("obert").from_args(_obert_args(obert_dtype="bfloat16")).scores(_feeding(targets, grads))
    torch.testing.assert_close(half["w0"].values(0, 64), exact, rtol=0.05, atol=1e-3)


def test_movement_scores_are_minus_the_sum_of_w_times_g():
    targets = _targets((3, 3))
    crit = get_criterion_class("movement").from_args(SimpleNamespace(fp16=False))
    expected = torch.zeros(9, dtype=torch.float64)
    gen = torch.Generator().manual_seed(4)
    for step in range(1, 6):
        with torch.no_grad():
            targets[0].param.add_(torch.randn(3, 3, generator=gen, dtype=torch.float64))
        targets[0].param.grad = torch.randn(3, 3, generator=gen, dtype=torch.float64)
        expected -= (targets[0].param.detach() * targets[0].param.grad).reshape(-1)
        crit.observe_step(targets, step)
    got = crit.scores(ScoringView(targets))["w0"].values(0, 9)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)


def test_movement_in_training_sums_the_dense_gradients_of_every_optimizer_step(tmp_path):
    """In a real run: the method's scores equal -sum_t w_t g_t recorded independently before each step's masking."""
    trainer = make_trainer("bert", sparse_args(tmp_path, "gmp", 0.59, criterion="movement"))
    recorded = {t.name: torch.zeros_like(t.param, dtype=torch.float32) for t in trainer.masks.targets}
    original = trainer.sparsity_callback.before_optimizer_step

    def spy():
        for t in trainer.masks.targets:
            recorded[t.name] -= t.param.detach().float() * t.param.grad.detach().float()
        original()

    trainer.sparsity_callback.before_optimizer_step = spy
    train_with_recorder(trainer)
    scores = trainer.sparse_method.criterion.accumulated
    for name, value in recorded.items():
        torch.testing.assert_close(scores[name], value, rtol=0, atol=0)
    assert any(float(v.abs().sum()) > 0 for v in recorded.values())


def test_kd_loss_equals_a_hand_computation():
    student = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 1.0]])
    teacher = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, -1.0]])
    T, h, task = 2.0, 0.75, torch.tensor(1.3)

    def softmax(row):
        e = [math.exp(x / T) for x in row]
        return [x / sum(e) for x in e]

    kl = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p, q = softmax(t_row), softmax(s_row)
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    total, items = kd_sum(student, teacher, T)
    assert items == 2 and math.isclose(float(total), kl, rel_tol=1e-6)
    loss = distillation_loss(task, total / items, h, T)
    assert math.isclose(float(loss), (1 - h) * 1.3 + h * T * T * kl / 2, rel_tol=1e-6)


def test_kd_on_token_logits_leaves_out_ignored_labels():
    gen = torch.Generator().manual_seed(5)
    s, t = torch.randn(2, 3, 4, generator=gen), torch.randn(2, 3, 4, generator=gen)
    labels = torch.tensor([[1, -100, 2], [-100, -100, 0]])
    total, items = kd_sum(s, t, 1.0, labels)
    keep = labels != -100
    ref = torch.nn.functional.kl_div(torch.log_softmax(s[keep], -1), torch.log_softmax(t[keep], -1), log_target=True,
                                     reduction="sum")
    assert items == 3 and torch.allclose(total, ref)


def test_distillation_trains_the_student_against_a_frozen_teacher(tmp_path):
    """The teacher stays in eval mode, gets no gradient and never changes; the training loss is the KD loss."""
    trainer = make_trainer("bert", sparse_args(tmp_path, "gmp", 0.5, distill_teacher="dense", max_steps=4,
                                               distill_hardness=1.0, distill_temperature=2.0, logging_steps=1))
    teacher = trainer.distiller.teacher
    before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    seen = []
    original = trainer.compute_loss

    def spy(model, inputs, return_outputs=False, num_items_in_batch=None):
        rng = torch.get_rng_state()
        loss = original(model, inputs, return_outputs, num_items_in_batch)
        torch.set_rng_state(rng)  # the same dropout masks again
        with torch.no_grad():
            student = model(**inputs).logits
            t_logits = teacher(**inputs).logits
            total, items = kd_sum(student, t_logits, 2.0)
            normalizer = trainer._kd_normalizer(num_items_in_batch)  # the Trainer's own rule for the task loss
            seen.append((float(loss), 4.0 * float(total) / float(items if normalizer is None else normalizer)))
        return loss

    trainer.compute_loss = spy
    trainer.train()
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(p, before[n]) for n, p in teacher.named_parameters())
    assert len(seen) == 8 and all(math.isclose(a, b, rel_tol=1e-4) for a, b in seen)


class LrRecorder(TrainerCallback):
    def __init__(self):
        self.after_step: list[float] = []  # lr the next optimizer step will use, after each step

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self.after_step.append(optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("criterion", ["magnitude", "obert"])
def test_lr_restarts_exactly_at_pruning_events(tmp_path, criterion):
    args = sparse_args(tmp_path, "gmp", 0.8, max_steps=16, gmp_start=0.125, gmp_end=0.75, prune_frequency=3,
                       lr_rewind=True, lr_rewind_final_ratio=0.1, criterion=criterion, obert_num_grads=2,
                       obert_block_size=4, gradient_accumulation_steps=1)
    trainer = make_trainer("bert", args)
    lrs = LrRecorder()
    trainer.add_callback(lrs)
    rec = train_with_recorder(trainer)
    changed = [s for s in range(1, 17) if rec.masks[s] != {} and (
        rec.masks[s - 1] == {} or any(not torch.equal(rec.masks[s][n], rec.masks[s - 1][n]) for n in rec.masks[s]))]
    events = trainer.sparse_method.pruning_steps(16)
    assert events == changed and len(events) >= 3
    peak = args.learning_rate
    for step, lr in enumerate(lrs.after_step, start=1):
        if step in events:
            assert lr == pytest.approx(peak, rel=1e-12), f"LR not restarted after the event at step {step}"
        else:
            assert lr < peak, f"LR at peak after step {step}, which is no pruning event"
    # within a cycle the LR falls linearly to 0.1 x peak at the next event
    first, second = events[0], events[1]
    assert lrs.after_step[second - 2] == pytest.approx(peak * (1 - 0.9 * (second - 1 - first) / (second - first)))


@pytest.mark.parametrize("method,flags,needle", [
    ("omp_after", dict(criterion="movement"), "gmp"),
    ("lrr", dict(criterion="movement"), "gmp"),
    ("rigl", dict(criterion="obert"), "fixed"),
    ("lth", dict(criterion="obert"), "fixed"),
    ("dense", dict(criterion="magnitude", sparsity=0.0), "fixed"),
    ("omp_after", dict(lr_rewind=True), "gmp"),
    ("lrr", dict(lr_rewind=True), "every round"),
    ("dense", dict(distill_teacher="dense", sparsity=0.0), "sparse method"),
    ("gmp", dict(distill_teacher="/no/such/folder"), "no such folder"),
    ("gmp", dict(criterion="wanda2"), "magnitude, random, snip"),
    ("gmp", dict(criterion="obert", obert_block_size=0), "obert_block_size"),
    ("gmp", dict(criterion="movement", fp16=True), "bf16"),
    ("gmp", dict(lr_rewind=True, lr_scheduler_type="polynomial"), "linear, cosine"),
])
def test_invalid_pairs_are_refused_at_parse_time(tmp_path, method, flags, needle):
    with pytest.raises(ValueError, match=needle):
        sparse_args(tmp_path, method, flags.pop("sparsity", 0.59), **flags)


def test_default_criteria_and_names():
    from smc_trainer.methods import get_method_class

    assert criterion_names()[:5] == ["magnitude", "random", "snip", "movement", "obert"]
    expected = {"omp_before": "magnitude", "random_before": "random", "snip": "snip", "gmp": "magnitude",
                "omp_after": "magnitude", "random_after": "random", "lth": "magnitude", "lrr": "magnitude",
                "rigl": "magnitude", "dense": None}
    for method, criterion in expected.items():
        assert get_method_class(method).criterion_name(SimpleNamespace(criterion=None)) == criterion


def test_old_method_names_give_the_same_masks_as_before_the_criterion_axis(tmp_path):
    """omp_before == omp_before --criterion magnitude; snip == omp_before --criterion snip; random_before likewise."""
    for method, criterion in (("omp_before", "magnitude"), ("snip", "snip"), ("random_before", "random")):
        a = make_trainer("bert", sparse_args(tmp_path / method, method, 0.59, max_steps=1))
        a.train()
        b = make_trainer("bert", sparse_args(tmp_path / criterion, "omp_before", 0.59, criterion=criterion,
                                             max_steps=1))
        b.train()
        for name in a.masks.masks:
            assert torch.equal(a.masks.masks[name], b.masks.masks[name])


def test_unknown_criterion_lists_the_choices():
    with pytest.raises(UsageError, match="--criterion must be one of magnitude"):
        get_criterion_class("nope")
