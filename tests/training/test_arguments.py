"""SparseTrainingArguments: bad sparse flags fail early, naming the flag, the value and the choices."""

from __future__ import annotations

import re

import pytest
import transformers
from sparse_helpers import method_flags
from transformers import HfArgumentParser

import smc_trainer
from smc_trainer import DataArguments, ModelArguments, SparseTrainingArguments
from smc_trainer.methods import METHODS, get_method_class

ALL_METHODS = ("dense", "omp_before", "random_before", "snip", "gmp", "omp_after", "random_after", "lth", "lrr",
               "rigl", "set")
INIT_METHODS = ("omp_before", "random_before", "snip")


def make_args(tmp_path, **kw) -> SparseTrainingArguments:
    return SparseTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kw)


def parse(tmp_path, **kw):
    argv = ["--output_dir", str(tmp_path), "--report_to", "none", "--use_cpu"]
    for key, value in kw.items():
        argv += [f"--{key}", str(value)]
    parser = HfArgumentParser((ModelArguments, DataArguments, SparseTrainingArguments))
    return parser.parse_args_into_dataclasses(argv)


# (id, flags, flag names the message must contain, bad value text, valid choices the message must list)
BAD = [
    ("sparsity-neg", dict(sparse_method="omp_before", sparsity=-0.1), ["--sparsity"], "-0.1", []),
    ("sparsity-one", dict(sparse_method="omp_before", sparsity=1.0), ["--sparsity"], "1.0", []),
    ("sparsity-1.5", dict(sparse_method="gmp", sparsity=1.5), ["--sparsity"], "1.5", []),
    ("method", dict(sparse_method="magnitude", sparsity=0.5), ["--sparse_method"], "magnitude", list(ALL_METHODS)),
    ("distribution", dict(sparse_method="omp_before", sparsity=0.5, distribution="erk2"), ["--distribution"], "erk2",
     ["global", "uniform", "erk"]),
    ("init-rigl", dict(sparse_method="rigl", sparsity=0.5, rigl_init_method="foo"), ["--rigl_init_method"], "foo",
     list(INIT_METHODS)),
    ("init-set", dict(sparse_method="set", sparsity=0.5, rigl_init_method="gmp"), ["--rigl_init_method"], "gmp",
     list(INIT_METHODS)),
    ("interval-rigl", dict(sparse_method="rigl", sparsity=0.5, rigl_update_interval=0), ["--rigl_update_interval"], "0",
     []),
    ("interval-set", dict(sparse_method="set", sparsity=0.5, rigl_update_interval=0), ["--rigl_update_interval"], "0",
     []),
    ("interval-neg", dict(sparse_method="rigl", sparsity=0.5, rigl_update_interval=-5), ["--rigl_update_interval"],
     "-5", []),
    ("drop-0", dict(sparse_method="rigl", sparsity=0.5, rigl_drop_fraction=0.0), ["--rigl_drop_fraction"], "0", []),
    ("drop-1", dict(sparse_method="rigl", sparsity=0.5, rigl_drop_fraction=1.0), ["--rigl_drop_fraction"], "1", []),
    ("drop-set", dict(sparse_method="set", sparsity=0.5, rigl_drop_fraction=1.5), ["--rigl_drop_fraction"], "1.5", []),
    ("update-end", dict(sparse_method="rigl", sparsity=0.5, rigl_update_end=0.0), ["--rigl_update_end"], "0", []),
    ("snip-batches", dict(sparse_method="snip", sparsity=0.5, snip_batches=0), ["--snip_batches"], "0", []),
    ("snip-batches-rigl", dict(sparse_method="rigl", sparsity=0.5, rigl_init_method="snip", snip_batches=0),
     ["--snip_batches"], "0", []),
    ("gmp-order", dict(sparse_method="gmp", sparsity=0.5, gmp_start=0.9, gmp_end=0.5), ["--gmp_start", "--gmp_end"],
     "0.9", []),
    ("gmp-end", dict(sparse_method="gmp", sparsity=0.5, gmp_start=0.1, gmp_end=1.5), ["--gmp_end"], "1.5", []),
    ("prune-frequency", dict(sparse_method="gmp", sparsity=0.5, prune_frequency=0), ["--prune_frequency"], "0", []),
    ("select-on", dict(sparse_method="omp_before", sparsity=0.5, select_on="train"), ["--select_on"], "train",
     ["validation", "test"]),
    ("dense-sparsity", dict(sparse_method="dense", sparsity=0.5), ["--sparsity", "dense"], "0.5", []),
    ("imp-rate", dict(sparse_method="lth", sparsity=0.36, imp_rate=0.0), ["--imp_rate"], "0", []),
    # a sparse method that prunes nothing would be a dense run under the method's name (gmp, omp_before, ...)
    ("sparse-at-zero", dict(sparse_method="gmp", sparsity=0.0), ["--sparse_method", "--sparsity"], "0", []),
    ("sparse-at-zero-before", dict(sparse_method="omp_before"), ["--sparsity"], "0", []),
    ("lth-off-grid", dict(sparse_method="lth", sparsity=0.5), ["--sparsity"], "0.5", []),
]


def check_message(msg: str, flags, value: str, choices) -> None:
    for flag in flags:
        assert flag in msg, f"{flag!r} not in {msg!r}"
    # the bad value appears as a value (not just as part of a longer number)
    assert re.search(rf"(?<![\w.]){re.escape(value)}", msg), f"{value!r} not in {msg!r}"
    for choice in choices:
        assert re.search(rf"\b{re.escape(choice)}\b", msg), f"choice {choice!r} not in {msg!r}"


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_flag_raises_on_construction(tmp_path, case):
    _, kw, flags, value, choices = case
    with pytest.raises(ValueError) as err:
        make_args(tmp_path, **kw)
    check_message(str(err.value), flags, value, choices)


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_flag_raises_from_the_cli_parser_before_anything_else(tmp_path, monkeypatch, capsys, case):
    """A value outside a flag's declared choices is refused by argparse itself (exit 2, its one `error:` line);
    any other bad value by the checks, before TrainingArguments' own."""
    _, kw, flags, value, choices = case
    calls = []
    original = transformers.TrainingArguments.__post_init__

    def spy(self):
        calls.append(self)
        return original(self)

    monkeypatch.setattr(transformers.TrainingArguments, "__post_init__", spy)
    with pytest.raises((ValueError, SystemExit)) as err:
        parse(tmp_path, **kw)
    if err.type is SystemExit:
        assert err.value.code == 2
        message = capsys.readouterr().err.strip().splitlines()[-1]
        assert "error: argument --" in message and "invalid choice" in message
    else:
        message = str(err.value)
    check_message(message, flags, value, choices)
    assert not calls, "TrainingArguments.__post_init__ ran before the sparse flags were validated"
    # sanity: the spy does see a valid parse
    parse(tmp_path, sparse_method="gmp", sparsity=0.5)
    assert len(calls) == 1


def test_sparse_method_message_lists_every_registered_method(tmp_path):
    with pytest.raises(ValueError) as err:
        make_args(tmp_path, sparse_method="magnitude")
    msg = str(err.value)
    for name in smc_trainer.method_names():
        assert re.search(rf"\b{name}\b", msg), name


GOOD = [
    dict(),
    dict(sparse_method="dense", sparsity=0.0),
    dict(sparse_method="omp_before", sparsity=0.5, distribution="erk"),
    dict(sparse_method="random_before", sparsity=0.99, distribution="uniform"),
    dict(sparse_method="snip", sparsity=0.36, snip_batches=4),
    dict(sparse_method="gmp", sparsity=0.8, gmp_start=0.0, gmp_end=1.0, prune_frequency=1),
    dict(sparse_method="gmp", sparsity=0.5, gmp_start=0.5, gmp_end=0.5),
    dict(sparse_method="omp_after", sparsity=0.2),
    dict(sparse_method="random_after", sparsity=0.2),
    dict(sparse_method="lth", sparsity=0.36),
    dict(sparse_method="lrr", sparsity=round(1 - 0.8**8, 4)),
    dict(sparse_method="rigl", sparsity=0.9, rigl_init_method="snip", snip_batches=2, rigl_update_interval=1,
         rigl_drop_fraction=0.3),
    dict(sparse_method="rigl", sparsity=0.5, rigl_init_method="random_before", rigl_update_end=1.0),
    dict(sparse_method="set", sparsity=0.5, rigl_init_method="omp_before", rigl_drop_fraction=0.99),
    dict(sparse_method="omp_before", sparsity=0.5, select_on="test"),
    dict(sparse_method="omp_before", sparsity=0.5, prune_include="encoder", prune_exclude="bias"),
]


@pytest.mark.parametrize("kw", GOOD, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()) or "defaults")
def test_good_flags_construct(tmp_path, kw):
    args = make_args(tmp_path, **kw)
    for key, value in kw.items():
        assert getattr(args, key) == value
    _, _, parsed = parse(tmp_path, **kw)
    for key, value in kw.items():
        assert getattr(parsed, key) == value


def test_defaults_are_a_dense_run(tmp_path):
    args = make_args(tmp_path)
    assert args.sparse_method == "dense"
    assert args.sparsity == 0.0
    assert args.distribution == "global"
    assert args.select_on == "validation"


def test_every_registered_method_has_a_valid_configuration(tmp_path):
    for name in smc_trainer.method_names():
        sparsity = 0.0 if name == "dense" else 0.36
        args = make_args(tmp_path, sparse_method=name, sparsity=sparsity, **method_flags(name))
        assert args.sparse_method == name


def test_method_names_lists_every_registered_method_dense_first():
    names = smc_trainer.method_names()
    assert names[0] == "dense"
    assert len(names) == len(set(names))
    assert set(names) == set(METHODS)
    assert set(ALL_METHODS) <= set(names)
    assert names == smc_trainer.method_names()  # stable
    for name in names:
        assert get_method_class(name).name == name


def test_unknown_method_class_lists_choices():
    with pytest.raises(ValueError) as err:
        get_method_class("magnitude")
    msg = str(err.value)
    assert "--sparse_method" in msg and "magnitude" in msg
    assert all(name in msg for name in ALL_METHODS)


def test_help_lists_sparse_flags():
    parser = HfArgumentParser((ModelArguments, DataArguments, SparseTrainingArguments))
    text = parser.format_help()
    for flag in ("--sparse_method", "--sparsity", "--distribution", "--rigl_init_method", "--select_on", "--recipe"):
        assert flag in text


def test_flag_groups_compose_in_order_each_flag_once():
    """The mixins' fields follow TrainingArguments' in `--help` order (method first, extensions last), and no
    flag is declared by two groups (a second declaration would silently replace the first's default and help)."""
    import dataclasses

    from smc_trainer.training import arguments as arguments_package

    groups = ("MethodArguments", "SnipArguments", "OneShotArguments", "WandaArguments", "SparseGptArguments",
              "GmpArguments", "DynamicArguments", "IterativeArguments",
              "OutputArguments", "LoraArguments", "SelectionArguments", "CriterionArguments",
              "ObertArguments", "DistillationArguments", "LrRewindArguments", "ArithmeticArguments", "ProteinArguments",
              "TranslationArguments", "CausalLmArguments", "ExtensionArguments")
    declared = [f.name for g in groups for f in dataclasses.fields(getattr(arguments_package, g))]
    assert len(declared) == len(set(declared))
    base = {f.name for f in dataclasses.fields(transformers.Seq2SeqTrainingArguments)}
    names = [f.name for f in dataclasses.fields(SparseTrainingArguments)]
    assert names[:len(base)] == [f.name for f in dataclasses.fields(transformers.Seq2SeqTrainingArguments)]
    assert names[len(base):] == [n for n in declared if n not in base]  # an overridden field keeps its place
    assert names[len(base)] == "sparse_method" and names[-1] == "method_preset"
