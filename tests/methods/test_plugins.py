"""Bring your own criterion: the example plugin of docs/extending.md, loaded by --plugins, used in runs and sweeps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sparse_helpers import make_trainer, sparse_args, train_with_recorder

from smc_trainer.engine.criteria import criterion_names
from smc_trainer.engine.selection import keep_count
from smc_trainer.errors import MissingFileError, UsageError
from smc_trainer.methods import get_method_class
from smc_trainer.plugins import load_plugins

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plugins" / "taylor_criterion.py"


def test_the_extending_example_registers_and_prunes_by_its_score(tmp_path):
    taylor_config = load_plugins(str(EXAMPLE))[0].TaylorConfig
    args = sparse_args(tmp_path, "omp_before", 0.59, plugins=str(EXAMPLE), criterion="taylor", max_steps=2,
                       criterion_config=taylor_config(batches=2))
    assert "taylor" in criterion_names()
    trainer = make_trainer("bert", args)
    # the reference: (w * g_b)^2 summed over the batches the criterion saw, recorded by a spy, then exact top-k
    scores, seen, original = {}, [], trainer.sparsity_callback.gradient_batches

    def spy(n):
        for _ in original(n):
            seen.append(n)
            for t in trainer.masks.targets:
                scores[t.name] = scores.get(t.name, 0) + (t.param.detach() * t.param.grad) ** 2
            yield

    trainer.sparsity_callback.gradient_batches = spy
    rec = train_with_recorder(trainer)
    assert seen == [2, 2]
    flat = torch.cat([scores[t.name].reshape(-1) for t in trainer.masks.targets])
    k = keep_count(0.41, flat.numel())
    assert sum(rec.initial_counts.values()) == k
    threshold = torch.sort(flat, descending=True).values[k - 1]
    first = rec.masks[0]
    kept = torch.cat([first[t.name].reshape(-1) for t in trainer.masks.targets])
    assert bool((flat[kept] >= threshold).all()) and bool((flat[~kept] <= threshold).all())


def test_plugins_load_once_and_missing_files_are_named(tmp_path):
    assert load_plugins(str(EXAMPLE)) == load_plugins(str(EXAMPLE))
    with pytest.raises(MissingFileError, match="nope.py"):
        load_plugins(str(tmp_path / "nope.py"))


def test_a_plugin_criterion_in_a_sweep_plan_and_cli_parse(tmp_path):
    from smc_trainer.runs.config import parse_run_config

    config = parse_run_config(["--plugins", str(EXAMPLE), "--sparse_method", "gmp", "--criterion", "taylor",
                               "--taylor_batches", "3", "--sparsity", "0.5", "--output_dir", str(tmp_path / "run")])
    assert config.training_args.criterion == "taylor"
    method = get_method_class("gmp").from_args(config.training_args)
    assert method.criterion.config.batches == 3  # the criterion's own flag, read into its config
    with pytest.raises(UsageError, match="--taylor_batches must be >= 1; got 0"):
        parse_run_config(["--plugins", str(EXAMPLE), "--sparse_method", "gmp", "--criterion", "taylor",
                          "--taylor_batches", "0", "--sparsity", "0.5", "--output_dir", str(tmp_path / "run")])


def test_the_extending_method_example_trains(tmp_path):
    """The method example of docs/extending.md, as a plugin file: prunes half-way and at the end, exact counts."""
    import re

    text = (Path(__file__).resolve().parents[2] / "docs" / "extending.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[1]
    path = tmp_path / "gmp_twice.py"
    path.write_text(code)
    args = sparse_args(tmp_path / "run", "gmp_twice", 0.6, plugins=str(path), lr_rewind=True)
    trainer = make_trainer("bert", args)
    rec = train_with_recorder(trainer)
    n = trainer.masks.total
    assert sum(rec.counts[3].values()) == keep_count(0.7, n)  # after step 4 of 8: half the target
    assert sum(rec.counts[-1].values()) == keep_count(0.4, n)
