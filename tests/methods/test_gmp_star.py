"""GMP*'s sparsity-scaled pruning window (`--gmp_window_per_halving`): the rule, the schedule it gives, the preset,
the refusal of bad values, and LR rewinding on GTS (whose task brings its own optimizer)."""

from __future__ import annotations

import math

import pytest
import torch

from smc_trainer.engine.schedules import CubicSchedule, halvings, sparsity_scaled_end
from smc_trainer.errors import UsageError
from smc_trainer.methods import get_method_class as get_method
from smc_trainer.runs.config import parse_run_config


@pytest.mark.parametrize(("sparsity", "expected"), [(0.0, 0.0), (0.5, 1.0), (0.75, 2.0), (0.875, 3.0),
                                                    (0.9, math.log2(10.0)), (0.99, math.log2(100.0))])
def test_halvings_is_log2_of_the_compression(sparsity, expected):
    assert halvings(sparsity) == pytest.approx(expected, rel=1e-12)


def test_window_grows_by_the_same_length_per_halving_up_to_the_latest_end():
    # 0.2 of training per halving, from 0.1, never past 0.8
    assert sparsity_scaled_end(0.5, 0.1, 0.2, 0.8) == pytest.approx(0.3)
    assert sparsity_scaled_end(0.75, 0.1, 0.2, 0.8) == pytest.approx(0.5)
    assert sparsity_scaled_end(0.875, 0.1, 0.2, 0.8) == pytest.approx(0.7)
    assert sparsity_scaled_end(0.97, 0.1, 0.2, 0.8) == 0.8  # log2(33) * 0.2 = 1.01: capped
    assert sparsity_scaled_end(0.0, 0.1, 0.2, 0.8) == 0.1
    ends = [sparsity_scaled_end(1 - 0.5**k, 0.0, 0.1, 1.0) for k in range(1, 6)]
    assert all(b - a == pytest.approx(0.1) for a, b in zip(ends, ends[1:]))  # equal length for each halving
    with pytest.raises(ValueError, match="per halving"):
        sparsity_scaled_end(0.5, 0.0, -0.1, 1.0)


def _method(*flags: str):
    args = parse_run_config(["--sparse_method", "gmp", "--prune_frequency", "4", *flags]).training_args
    return get_method(args.sparse_method).from_args(args)


def test_gmp_prunes_over_a_window_and_with_events_scaled_to_the_target():
    """At a fixed frequency, a target with twice the halvings gets twice the pruning events; without the flag the
    window is --gmp_end whatever the target."""
    counts = {}
    for sparsity in (0.5, 0.75, 0.875):
        method = _method("--sparsity", str(sparsity), "--gmp_start", "0", "--gmp_end", "0.9",
                         "--gmp_window_per_halving", "0.25")
        schedule = method.schedule(400)
        assert schedule.end == round(400 * 0.25 * halvings(sparsity))
        assert schedule.sparsity_after(schedule.end) == sparsity  # the exact target at the window's end
        counts[sparsity] = len(method.pruning_steps(400))
    assert counts == {0.5: 25, 0.75: 50, 0.875: 75}  # one event every 4 steps of a window of 100 x halvings
    fixed = _method("--sparsity", "0.875", "--gmp_start", "0", "--gmp_end", "0.9").schedule(400)
    assert fixed == CubicSchedule.from_fractions(0.875, 400, 0.0, 0.9, 4)


def test_gmp_star_preset_scales_its_window():
    gmp = get_method("gmp")
    ends = [gmp.from_args(parse_run_config(["--sparse_method", "gmp_star", "--sparsity", s]).training_args).window_end()
            for s in ("0.59", "0.79", "0.893", "0.97")]
    assert ends == pytest.approx([0.2 * halvings(0.59), 0.2 * halvings(0.79), 0.2 * halvings(0.893), 0.7])


@pytest.mark.parametrize("value", ["-0.1", "1.5"])
def test_bad_window_per_halving_is_refused_naming_the_value(value):
    with pytest.raises(UsageError, match=rf"--gmp_window_per_halving must be in \[0, 1\].*got {value}"):
        parse_run_config(["--sparse_method", "gmp", "--sparsity", "0.5", "--gmp_window_per_halving", value])


def test_lr_rewind_on_gts_restarts_both_learning_rates_at_pruning_events(tmp_path):
    """GTS brings its own Adam (two learning rates) and StepLR; with --lr_rewind the cyclic schedule replaces the
    StepLR (it used to be ignored without a word), and a scheduler handed to the Trainer is refused."""
    from arithmetic_helpers import TINY_GTS_FLAGS, write_cv_data, write_encoder

    from smc_trainer.runs import pipeline
    from smc_trainer.training.trainer import SparseTrainer

    data = write_cv_data(tmp_path / "data", name="cv_asdiv-a", folds=1, dev=(4,))
    config = parse_run_config([
        "--recipe", "asdiv_a", "--fold", "0", "--model_name_or_path", write_encoder(tmp_path / "enc"),
        "--data_dir", str(data), "--sparse_method", "gmp", "--sparsity", "0.5", "--max_steps", "8",
        "--per_device_train_batch_size", "4", "--output_dir", str(tmp_path / "out"), "--save_strategy", "no",
        "--prune_frequency", "3", "--gmp_start", "0", "--gmp_end", "0.75", "--lr_rewind", "true",
        "--lr_rewind_final_ratio", "0.1", "--learning_rate", "1e-2", "--encoder_learning_rate", "1e-3",
        *TINY_GTS_FLAGS])
    bundle = pipeline.build_task(config)
    trainer = SparseTrainer(model=bundle.model, args=config.training_args, train_dataset=bundle.train_dataset,
                            data_collator=bundle.data_collator, **bundle.trainer_kwargs)
    trainer.create_optimizer()  # GTS's factory builds it on the model the Trainer trains
    seen: list[list[float]] = []
    original = trainer.optimizer.step

    def step(*args, **kwargs):
        seen.append([g["lr"] for g in trainer.optimizer.param_groups])
        return original(*args, **kwargs)

    trainer.optimizer.step = step
    trainer.train()
    events = trainer.sparse_method.pruning_steps(8)
    assert events == [3, 6]
    peaks = seen[0]
    assert sorted(peaks) == pytest.approx([1e-3, 1e-2])
    assert len(seen) == 8
    for i, lrs in enumerate(seen):  # optimizer step i + 1 runs at lrs: the first step and each one after an event
        assert (lrs == pytest.approx(peaks)) == (i == 0 or i in events), f"step {i + 1}: {lrs}"
        assert lrs[0] / lrs[1] == pytest.approx(peaks[0] / peaks[1])  # both groups follow the same cycle
    scheduler = torch.optim.lr_scheduler.StepLR(trainer.optimizer, 1)
    again = SparseTrainer(model=bundle.model, args=config.training_args, train_dataset=bundle.train_dataset,
                          data_collator=bundle.data_collator, optimizers=(trainer.optimizer, scheduler))
    with pytest.raises(UsageError, match="a scheduler was passed"):
        again.create_scheduler(8, trainer.optimizer)
