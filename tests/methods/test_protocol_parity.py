"""Parity flags with the official SMC-Bench code (docs/differences.md, "Protocol differences"): GMP events at the
multiples of the frequency (`--gmp_anchor absolute`) and RigL's drop fraction decaying to a floor
(`--rigl_drop_fraction_floor 0.005`), checked on the CSQA recipe's own numbers and against torch's CosineAnnealingLR,
which the official `CosineDecay` wraps."""

from __future__ import annotations

import math

import pytest
import torch
from sparse_helpers import sparse_args

from smc_trainer.engine.schedules import CosineDropSchedule, CubicSchedule
from smc_trainer.errors import UsageError
from smc_trainer.methods import get_method_class
from smc_trainer.runs.config import parse_run_config


def csqa_args(*flags: str):
    return parse_run_config(["--recipe", "csqa", "--output_dir", "/tmp/unused", "--report_to", "none",
                             "--sparsity", "0.893", *flags]).training_args


def pruning_steps(args, total: int) -> list[int]:
    """Steps at which GMP prunes (events whose scheduled sparsity is above 0)."""
    schedule = get_method_class("gmp").from_args(args).schedule(total)
    return [s for s in range(1, total + 1) if schedule.is_event(s) and schedule.sparsity_at(s) > 0]


def test_csqa_gmp_events_start_anchored_and_absolute():
    """CSQA: 3000 steps, pruning from 10% (step 300) to 80% (step 2400) every 500. Ours prunes at 300 + 500k and
    exactly at 2400; the official code at the multiples of 500 below 2400 (then stops short of the target); the
    absolute anchor prunes at those multiples and exactly at 2400."""
    ours = csqa_args("--sparse_method", "gmp")
    assert (ours.max_steps, ours.prune_frequency, ours.gmp_start, ours.gmp_end) == (3000, 500, 0.1, 0.8)
    assert pruning_steps(ours, 3000) == [800, 1300, 1800, 2300, 2400]
    official = csqa_args("--sparse_method", "gmp", "--gmp_anchor", "absolute")
    assert pruning_steps(official, 3000) == [500, 1000, 1500, 2000, 2400]
    schedule = get_method_class("gmp").from_args(official).schedule(3000)
    assert schedule.sparsity_at(2000) == pytest.approx(0.8868, abs=1e-4)  # where the official code stops
    assert schedule.sparsity_after(2399) == schedule.sparsity_at(2000) and schedule.sparsity_after(2400) == 0.893
    assert schedule.sparsity_after(499) == 0.0 and schedule.sparsity_after(999) == schedule.sparsity_at(500)


def test_absolute_anchor_matches_the_official_condition_before_the_end():
    """`t0 <= t < tf and t % f == 0` (the official `Masking.step`), plus our exact final event at tf."""
    for total, start, end, freq in ((3000, 0.1, 0.8, 500), (19250, 0.1, 0.8, 1000), (100, 0.0, 0.5, 7)):
        schedule = CubicSchedule.from_fractions(0.5, total, start, end, freq, anchor="absolute")
        t0, tf = int(total * start), int(total * end)
        official = [t for t in range(1, total + 1) if t0 <= t < tf and t % freq == 0]
        assert [t for t in range(1, total + 1) if schedule.is_event(t)] == sorted({*official, tf})


def test_drop_fraction_floor_is_the_official_cosine_decay():
    """With --drop_fraction_floor 0.005 the fraction at every step equals CosineAnnealingLR(lr 0.5, eta_min 0.005),
    the official `CosineDecay`; by default it decays to 0 (RigL)."""
    args = csqa_args("--sparse_method", "rigl", "--rigl_drop_fraction_floor", "0.005")
    schedule = get_method_class("rigl").from_args(args).schedule(3000)
    assert (schedule.floor, schedule.interval) == (0.005, 500)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 3000, eta_min=0.005)
    for step in range(1, 3000):
        optimizer.step()
        cosine.step()
        assert schedule.fraction_at(step) == pytest.approx(cosine.get_last_lr()[0], abs=1e-9)
    assert [round(schedule.fraction_at(s), 3) for s in (500, 1000, 1500, 2000, 2500)] == [
        0.467, 0.376, 0.253, 0.129, 0.038]  # reference/SMC-BENCH.md 3.2 item 8
    plain = CosineDropSchedule.from_fractions(0.5, 500, 3000, 1.0)
    assert plain.floor == 0.0 and plain.fraction_at(1500) == pytest.approx(0.25)
    assert math.isclose(plain.fraction_at(2999), 0.5 / 2 * (1 + math.cos(math.pi * 2999 / 3000)))


def test_parity_flags_are_validated(tmp_path):
    with pytest.raises(UsageError, match=r"--gmp_anchor must be one of start, absolute; got 'end'"):
        sparse_args(tmp_path, "gmp", 0.5, gmp_anchor="end")
    message = r"--rigl_drop_fraction_floor must be in \[0, --rigl_drop_fraction 0.5\]; got 0.6"
    with pytest.raises(UsageError, match=message):
        sparse_args(tmp_path, "rigl", 0.5, rigl_drop_fraction_floor=0.6)
