"""Distillation on GTS (arithmetic): the KD term compares the decoder's per-step scores under teacher forcing
(the same gold tree for teacher and student), checked against a hand computation, inside the Trainer, and
through the pipeline with `--distill_teacher dense`."""

from __future__ import annotations

import math

import pytest
import torch
from arithmetic_helpers import problem
from test_arithmetic import model_inputs, tiny_batch, tiny_gts
from test_arithmetic_pipeline import config_for, tiny  # noqa: F401  (the module-scoped fixture)

from smc_trainer.runs import pipeline
from smc_trainer.training.distillation import Distiller, kd_sum
from smc_trainer.training.trainer import SparseTrainer


def _softmax(row: list[float], temperature: float) -> list[float]:
    top = max(row)
    e = [math.exp((x - top) / temperature) for x in row]
    return [x / sum(e) for x in e]


def hand_kd(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float
            ) -> tuple[float, int]:
    """Sum over gold steps of KL(softmax(teacher/T) || softmax(student/T)) over the tokens the problem allows
    (scores above -1e30), in plain Python."""
    total, items = 0.0, 0
    for b in range(labels.size(0)):
        for t in range(labels.size(1)):
            if int(labels[b, t]) < 0:
                continue
            allowed = [v for v in range(student.size(2)) if float(student[b, t, v]) > -1e30]
            p = _softmax([float(teacher[b, t, v]) for v in allowed], temperature)
            q = _softmax([float(student[b, t, v]) for v in allowed], temperature)
            total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)
            items += 1
    return total, items


@pytest.mark.parametrize("temperature", [2.0, 0.5])
def test_gts_kd_loss_equals_a_hand_computation_over_per_step_scores(temperature):
    rows = [problem(i) for i in range(7)]
    student, teacher = tiny_gts(seed=0).eval(), tiny_gts(seed=1).train()
    batch = tiny_batch(rows, student)
    inputs, labels = model_inputs(batch), batch["labels"]
    out = student(**inputs, decode=False)
    assert out.predictions is None and out.logits.shape[:2] == labels.shape
    assert torch.equal(out.logits_mask, labels >= 0)
    # each step's scores are the problem's own: the same as when it is scored alone
    for i in (0, 4, 6):
        alone = student(**model_inputs(tiny_batch([rows[i]], student)), decode=False)
        steps = int(alone.logits_mask.sum())
        torch.testing.assert_close(alone.logits[0, :steps], out.logits[i, :steps], rtol=1e-5, atol=1e-5)
    # the task loss is the mean gold-token NLL of those very scores
    scores = out.logits.detach()  # disallowed tokens (number slots the problem lacks) come last in the vocabulary
    nll = [-math.log(_softmax([float(x) for x in scores[b, t] if float(x) > -1e30], 1.0)[int(labels[b, t])])
           for b in range(labels.size(0)) for t in range(labels.size(1)) if int(labels[b, t]) >= 0]
    assert float(out.loss) == pytest.approx(sum(nll) / len(nll), rel=1e-5)

    hardness = 0.75
    distiller = Distiller(teacher, hardness, temperature)
    distiller.prepare(torch.device("cpu"), torch.float32)
    t_logits = distiller.teacher_logits(inputs)  # eval mode, teacher forcing, no beam search
    assert not teacher.training and not t_logits.requires_grad
    torch.testing.assert_close(t_logits, teacher(**inputs, decode=False).logits)
    kl, items = hand_kd(out.logits, t_logits, labels, temperature)
    assert items == int((labels >= 0).sum()) > 7
    loss = distiller.loss(out.loss, out, t_logits, labels, None)
    expected = (1 - hardness) * float(out.loss) + hardness * temperature**2 * kl / items
    assert math.isfinite(float(loss)) and float(loss) == pytest.approx(expected, rel=1e-5)
    total, n = kd_sum(out.logits, out.logits.detach(), temperature, mask=out.logits_mask)
    assert n == items and float(total) == pytest.approx(0.0, abs=1e-6)  # a student distilled from itself


def test_gts_trainer_minimizes_the_kd_loss_against_a_frozen_teacher(tiny, tmp_path):  # noqa: F811
    """With --distill_teacher dense and hardness 1 the GTS training loss is T^2 x the mean per-step KL against
    the dense fine-tune, which stays frozen in eval mode."""
    config = config_for(tiny, tmp_path, "asdiv_a", "gmp", 0.5, "--fold", "0", "--distill_teacher", "dense",
                        "--distill_hardness", "1.0", "--distill_temperature", "2.0", "--max_steps", "3",
                        "--gmp_start", "0", "--gmp_end", "0.5")
    bundle = pipeline.build_task(config)
    teacher = pipeline.load_teacher(bundle.model, pipeline.teacher_source(config))  # trains the dense run
    before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    trainer = SparseTrainer(model=bundle.model, args=config.training_args, train_dataset=bundle.train_dataset,
                            data_collator=bundle.data_collator, teacher=teacher, **bundle.trainer_kwargs)
    seen = []
    original = trainer.compute_loss

    def spy(model, inputs, return_outputs=False, num_items_in_batch=None):
        rng = torch.get_rng_state()
        loss = original(model, inputs, return_outputs, num_items_in_batch)
        torch.set_rng_state(rng)  # the same dropout masks again
        with torch.no_grad():
            student = model(**inputs)
            t_logits = teacher(**inputs, decode=False).logits
            kl, items = hand_kd(student.logits, t_logits, inputs["labels"], 2.0)
            seen.append((float(loss), 4.0 * kl / items))
        return loss

    trainer.compute_loss = spy
    trainer.train()
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(p, before[n]) for n, p in teacher.named_parameters())
    assert len(seen) == 3 and all(b > 0 and math.isclose(a, b, rel_tol=1e-3) for a, b in seen)  # float32 KL


def test_gts_runs_with_distill_teacher_dense_through_the_pipeline(tiny, tmp_path):  # noqa: F811
    """The refusal is gone: a GMP + KD run on GTS trains, reaches its sparsity and is tested."""
    [outcome] = pipeline.run(config_for(tiny, tmp_path, "asdiv_a", "gmp", 0.5, "--fold", "0",
                                        "--distill_teacher", "dense", "--gmp_start", "0", "--gmp_end", "0.5"))
    assert outcome.metrics["test_total"] == 4 and 0.0 <= outcome.metrics["test_accuracy"] <= 1.0
    assert outcome.mask_sparsity == pytest.approx(0.5, abs=1e-3)
