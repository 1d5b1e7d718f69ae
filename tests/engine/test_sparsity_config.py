"""`SparsityConfig`, the settings every method and criterion shares: it mirrors the flags exactly, methods and
criteria run from configs alone (no training arguments), and its errors name parameters or flags."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from smc_trainer.engine.criteria import get_criterion_class
from smc_trainer.engine.masks import MaskSet
from smc_trainer.engine.sparsity import SparsityConfig
from smc_trainer.errors import UsageError
from smc_trainer.methods import get_method_class
from smc_trainer.methods.base import SparseContext
from smc_trainer.methods.gmp import GmpConfig
from smc_trainer.training.arguments import SparseTrainingArguments


def test_every_field_is_a_flag_with_the_same_default():
    flags = {f.name: f for f in dataclasses.fields(SparseTrainingArguments)}
    for knob in SparsityConfig.fields():
        flag = SparsityConfig.flag_of(knob.name)
        assert flag in flags, flag
        assert flags[flag].default == knob.default, flag


def test_from_flags_reads_the_flags(tmp_path):
    args = SparseTrainingArguments(output_dir=str(tmp_path), sparse_method="omp_before", sparsity=0.75,
                                   distribution="uniform", prune_exclude="bias", seed=7, report_to=[])
    s = SparsityConfig.from_flags(args)
    assert (s.sparsity, s.distribution, s.exclude, s.seed, s.pattern) == (0.75, "uniform", "bias", 7, "unstructured")
    assert s.density == 0.25 and s.nm is None
    assert SparsityConfig(pattern="2:4").nm.n == 2


@pytest.mark.parametrize("kw, words", [
    (dict(sparsity=1.0), "sparsity must be in [0, 1); got 1.0"),
    (dict(distribution="erk2"), "distribution must be one of global, uniform, erk, owl; got 'erk2'"),
    (dict(owl_threshold=0.0), "owl_threshold must be > 0"),
])
def test_errors_name_the_parameter_in_python_and_the_flag_from_flags(kw, words):
    with pytest.raises(UsageError) as err:
        SparsityConfig(**kw).validate()
    assert str(err.value).startswith(words)
    with pytest.raises(UsageError) as err:
        SparsityConfig.from_flags(kw).validate()
    assert str(err.value).startswith("--" + words)


class _Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8, bias=False), nn.Linear(8, 4, bias=False)


def test_a_method_runs_from_configs_alone():
    torch.manual_seed(0)
    model = _Two()
    sparsity = SparsityConfig(sparsity=0.75, distribution="uniform")
    masks = MaskSet(sparsity.targets(model))
    ctx = SparseContext(masks.targets, masks, sparsity, total_steps=0, accumulate_gradients=lambda n: None)
    chosen = get_method_class("omp_before")(sparsity=sparsity).initial_masks(ctx)
    assert {name: int(m.sum()) for name, m in chosen.items()} == {"a.weight": 16, "b.weight": 8}
    kept_a = model.a.weight.abs().flatten().topk(16).indices
    assert chosen["a.weight"].flatten()[kept_a].all()  # the 16 largest of `a`, uniform: each layer at 25%


def test_configs_are_checked_and_arguments_are_refused_where_a_config_belongs(tmp_path):
    gmp = get_method_class("gmp")(GmpConfig(start=0.1, end=0.6), sparsity=SparsityConfig(sparsity=0.9))
    assert (gmp.config.start, gmp.sparsity.sparsity, gmp.criterion.name) == (0.1, 0.9, "magnitude")
    args = SparseTrainingArguments(output_dir=str(tmp_path), sparse_method="gmp", sparsity=0.5, report_to=[])
    with pytest.raises(TypeError, match=r"GMP takes a GmpConfig .* GMP.from_args\(args\)"):
        get_method_class("gmp")(args)
    with pytest.raises(TypeError, match="Snip takes a SnipConfig"):
        get_criterion_class("snip")(GmpConfig())
    built = get_method_class("gmp").from_args(args)
    assert built.sparsity.sparsity == 0.5 and built.config == GmpConfig.from_flags(args)
