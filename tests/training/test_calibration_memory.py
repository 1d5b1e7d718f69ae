"""SparseGPT's calibration memory: q/k/v share one Hessian, the inverse factor is computed in the Hessian's buffer,
and `--calibration_memory layer` (one Hessian per pass) gives the masks and weights of `block` bit for bit."""

from __future__ import annotations

import pytest
import torch
from sparse_helpers import sparse_args
from tiny_models import make_tiny

from smc_trainer import SparseTrainingArguments
from smc_trainer.engine.masks import MaskSet
from smc_trainer.engine.oneshot.sparsegpt import (
    compute_dtype,
    inverse_cholesky,
    inverse_cholesky_,
    sparsegpt_prune,
    sparsegpt_prune_factored,
)
from smc_trainer.engine.sparsity import SparsityConfig
from smc_trainer.engine.targets import find_targets
from smc_trainer.methods import get_method_class
from smc_trainer.methods.base import SparseContext
from smc_trainer.training.calibration import HookCalibrator


def _batches(n=12, seq=8, seed=1):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 60, (n, seq), generator=gen)
    mask = torch.ones(n, seq, dtype=torch.long)
    mask[::3, 5:] = 0  # some padding: left out of the Hessians in both modes
    return [{"input_ids": ids[:6], "attention_mask": mask[:6]}, {"input_ids": ids[6:], "attention_mask": mask[6:]}]


def _prune(tmp_path, arch, memory, **flags):
    """(model, masks) after sparsegpt_before on a tiny model with --calibration_memory `memory`."""
    model = make_tiny(arch)
    targets = find_targets(model, prune_embeddings=False)
    batches = _batches()
    args = sparse_args(tmp_path, "sparsegpt_before", flags.pop("sparsity", 0.59), distribution="uniform",
                       calibration_memory=memory, **flags)
    ctx = SparseContext(targets, MaskSet(targets), SparsityConfig.from_flags(args), 0, lambda n: None,
                        calibrator=HookCalibrator(model, lambda: iter(batches)))
    return model, get_method_class("sparsegpt_before").from_args(args).initial_masks(ctx)


@pytest.mark.parametrize("flags", [{}, {"sparsity": 0.5, "sparsity_pattern": "2:4"}], ids=["59%", "2:4"])
@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_layer_memory_gives_the_masks_and_weights_of_block_memory_bit_for_bit(tmp_path, arch, flags):
    block_model, block_masks = _prune(tmp_path, arch, "block", **dict(flags))
    layer_model, layer_masks = _prune(tmp_path, arch, "layer", **dict(flags))
    assert block_masks.keys() == layer_masks.keys() and block_masks
    for name, mask in block_masks.items():
        assert torch.equal(mask, layer_masks[name]), name
    layer_state = layer_model.state_dict()
    for name, value in block_model.state_dict().items():
        assert torch.equal(value, layer_state[name]), name
    dense = make_tiny(arch).state_dict()
    assert any(not torch.equal(v, dense[n]) for n, v in layer_state.items())  # it did prune


def test_linears_reading_the_same_input_form_one_group_with_one_hessian():
    model = make_tiny("bert")
    targets = find_targets(model, prune_embeddings=False, prune_heads=False)
    blocks = HookCalibrator(model, lambda: iter(_batches())).blocks(targets)
    first = [[t.name.split("layer.0.")[-1] for t in group] for group in blocks[0]]
    assert first == [["attention.self.query.weight", "attention.self.key.weight", "attention.self.value.weight"],
                     ["attention.output.dense.weight"], ["intermediate.dense.weight"], ["output.dense.weight"]]


def test_a_shared_hessian_prunes_each_linear_as_its_own_hessian_would(tmp_path):
    """The grouped path (one factor for q, k, v, computed in place) against sparsegpt_prune per linear on the
    Hessians of a plain hook, layer 0 of a dense tiny BERT."""
    model = make_tiny("bert")
    targets = [t for t in find_targets(model, prune_embeddings=False) if "layer.0.attention.self" in t.name]
    inputs = []
    handle = model.bert.encoder.layer[0].attention.self.query.register_forward_pre_hook(
        lambda m, inp: inputs.append(inp[0].reshape(-1, inp[0].shape[-1])))
    batches = [{"input_ids": b["input_ids"]} for b in _batches()]  # no padding: every row counts
    with torch.no_grad():
        for b in batches:
            model(**b)
    handle.remove()
    hessian = torch.zeros(16, 16)
    for x in inputs:
        hessian.addmm_(x.t(), x)
    factor = inverse_cholesky_(hessian.clone(), 0.01)
    for t in targets:
        w = t.param.detach()
        expected = sparsegpt_prune(w, hessian, keep=w.numel() // 2)
        got = sparsegpt_prune_factored(w, factor, keep=w.numel() // 2)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]), t.name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inverse_cholesky_in_place_equals_the_copying_one_in_the_same_buffer(dtype):
    x = torch.randn(48, 100, dtype=dtype, generator=torch.Generator().manual_seed(0))
    x[5] = 0.0  # a dead input
    hessian = x @ x.t()
    expected = inverse_cholesky(hessian)
    buffer = hessian.clone()
    got = inverse_cholesky_(buffer)
    assert got.data_ptr() == buffer.data_ptr()
    assert got.stride() == expected.stride() and torch.equal(got, expected)
    assert compute_dtype(torch.zeros(1, dtype=torch.bfloat16)) == torch.float32


def test_sparsegpt_prune_factored_refuses_a_factor_of_the_wrong_shape_or_dtype():
    w = torch.randn(4, 8)
    with pytest.raises(ValueError, match="factor"):
        sparsegpt_prune_factored(w, torch.eye(6), keep=10)
    with pytest.raises(ValueError, match="factor"):
        sparsegpt_prune_factored(w, torch.eye(8, dtype=torch.float64), keep=10)


def test_sequential_refuses_an_unknown_memory_mode():
    model = make_tiny("bert")
    with pytest.raises(ValueError, match="--calibration_memory must be one of block, layer; got 'model'"):
        HookCalibrator(model, lambda: iter(_batches())).sequential(find_targets(model), lambda g, h: None,
                                                                   memory="model")


@pytest.mark.parametrize("kw,message", [
    (dict(sparse_method="sparsegpt_before", calibration_memory="tiny"),
     "--calibration_memory must be one of block, layer; got 'tiny'"),
    (dict(sparse_method="wanda_before", calibration_memory="layer"), "--criterion sparsegpt"),
    (dict(sparse_method="omp_before", calibration_memory="layer"), "--criterion magnitude collects none"),
])
def test_calibration_memory_flag_is_checked_at_parse_time(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        SparseTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", sparsity=0.5,
                                prune_embeddings=False, distribution="uniform", **kw)


def test_layer_memory_is_accepted_with_sparsegpt(tmp_path):
    args = SparseTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", sparsity=0.5,
                                   sparse_method="omp_after", criterion="sparsegpt", prune_embeddings=False,
                                   distribution="uniform", calibration_memory="layer")
    assert args.calibration_memory == "layer"


def test_padded_inputs_are_accumulated_in_chunks_equal_to_the_whole_batch_hessian():
    """More tokens than HESSIAN_CHUNK_TOKENS, with padding: the chunked Hessian equals X^T X over the non-padding
    rows of the whole batch (to float32 rounding: the sums are grouped differently)."""
    from smc_trainer.training.calibration import HESSIAN_CHUNK_TOKENS

    model = make_tiny("bert")
    targets = [t for t in find_targets(model, prune_embeddings=False) if "layer.0.intermediate" in t.name]
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(2, 60, (12, 30), generator=gen)
    mask = torch.ones(12, 30, dtype=torch.long)
    mask[1::2, 17:] = 0
    assert ids.numel() > 2 * HESSIAN_CHUNK_TOKENS
    inputs = []
    handle = model.bert.encoder.layer[0].intermediate.dense.register_forward_pre_hook(
        lambda m, inp: inputs.append(inp[0].reshape(-1, inp[0].shape[-1])[mask.reshape(-1) != 0].double()))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    handle.remove()
    got = {}
    HookCalibrator(model, lambda: iter([{"input_ids": ids, "attention_mask": mask}])).sequential(
        targets, lambda group, h: got.setdefault(group[0].name, h.clone()))
    x = inputs[0]
    assert torch.allclose(got[targets[0].name].double(), x.t() @ x, rtol=1e-5, atol=1e-4)
