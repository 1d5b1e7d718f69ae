"""Sharded back-ends (FSDP, DeepSpeed ZeRO) are refused for sparse methods while the flags are parsed,
before any model is loaded, with a message naming the flag and what to use instead."""

from __future__ import annotations

import pytest
from sparse_helpers import method_argv

from smc_trainer import SparseTrainingArguments
from smc_trainer.methods import method_names
from smc_trainer.runs.config import parse_run_config
from smc_trainer.training.parallel import refuse_sharded_backend

SPARSE = [m for m in method_names() if m != "dense"]
SPARSITY = {"lth": "0.2", "lrr": "0.2"}  # iterative methods need a sparsity on their round grid


def _argv(method: str, *extra: str) -> list[str]:
    sparsity = "0" if method == "dense" else SPARSITY.get(method, "0.5")
    return ["--output_dir", "/tmp/unused", "--sparse_method", method, "--sparsity", sparsity, "--use_cpu",
            *method_argv(method), *extra]


@pytest.mark.parametrize("method", SPARSE)
@pytest.mark.parametrize("flags,named", [(["--deepspeed", "ds_zero2.json"], "--deepspeed"),
                                         (["--fsdp", "full_shard"], "--fsdp")])
def test_sharded_backend_flags_are_refused_while_parsing(method, flags, named):
    with pytest.raises(ValueError, match=f"--sparse_method {method} does not support .*{named}.*DDP"):
        parse_run_config(_argv(method, *flags))  # the DeepSpeed config file need not even exist


@pytest.mark.parametrize("env,backend", [("ACCELERATE_USE_DEEPSPEED", "deepspeed"), ("ACCELERATE_USE_FSDP", "fsdp")])
def test_accelerate_launch_backends_are_refused_too(monkeypatch, env, backend):
    """`accelerate launch --use_deepspeed/--use_fsdp` (or an accelerate config) sets these, not the flags."""
    monkeypatch.setenv(env, "true")
    with pytest.raises(ValueError, match=f"does not support {backend} .*{env}"):
        SparseTrainingArguments(output_dir="/tmp/unused", sparse_method="rigl", sparsity=0.5, use_cpu=True)


def test_dense_may_use_sharded_backends_and_ddp_is_never_refused():
    refuse_sharded_backend("dense", "fsdp")
    refuse_sharded_backend("dense", "deepspeed")
    for method in SPARSE:
        refuse_sharded_backend(method, None)
    with pytest.raises(ValueError, match="does not support fsdp"):
        refuse_sharded_backend("gmp", "fsdp")
