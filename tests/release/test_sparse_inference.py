"""CPU CSR inference equals the dense model with zeros; 2:4 semi-structured conversion is refused clearly where
its kernels cannot run, and everything up to that boundary (which linears are 2:4) is checked."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_tiny

from smc_trainer.engine.patterns import NMPattern, nm_keep_mask
from smc_trainer.engine.targets import find_targets
from smc_trainer.release.semi_structured import semi_structured_unavailable, to_semi_structured, two_four_linears
from smc_trainer.release.sparse_inference import CSRLinear, to_sparse_inference


def _prune_linears(model, sparsities):
    """Magnitude-prune each nn.Linear to the next sparsity of `sparsities` (cycled)."""
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    with torch.no_grad():
        for i, m in enumerate(linears):
            s = sparsities[i % len(sparsities)]
            k = int(s * m.weight.numel())
            if k:
                threshold = m.weight.abs().flatten().kthvalue(k).values
                m.weight.mul_(m.weight.abs() > threshold)
    return linears


@pytest.mark.parametrize("block_min", [None, 4])
@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_csr_model_equals_the_dense_model_with_zeros(arch, block_min, monkeypatch):
    """With the default SEQUENCE_BLOCK_MIN the 9-token sequences run as one table of all tokens; with 4, one table
    per sequence (the layout of real batches)."""
    from smc_trainer.release import sparse_inference as si

    if block_min is not None:
        monkeypatch.setattr(si, "SEQUENCE_BLOCK_MIN", block_min)
    model = make_tiny(arch).eval()
    _prune_linears(model, [0.5, 0.9, 0.95])
    ids = torch.randint(3, 60, (2, 4, 9) if arch == "roberta" else (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dense = model(input_ids=ids).logits
    converted = to_sparse_inference(model, min_sparsity=0.85)
    assert converted and all(s >= 0.85 for s in converted.values())
    n_csr = sum(isinstance(m, CSRLinear) for m in model.modules())
    n_dense = sum(type(m) is torch.nn.Linear for m in model.modules())
    assert n_csr == len(converted) and n_dense > 0  # the 50% linears stay dense
    with torch.no_grad():
        sparse = model(input_ids=ids).logits
    assert torch.allclose(sparse, dense, atol=1e-4, rtol=0)


def test_csr_linear_without_bias_and_threshold_checks():
    linear = torch.nn.Linear(8, 4, bias=False)
    with torch.no_grad():
        linear.weight.mul_(torch.rand(4, 8) > 0.9)
    x = torch.randn(3, 5, 8)
    assert torch.allclose(CSRLinear.from_linear(linear)(x), linear(x), atol=1e-6)
    with pytest.raises(ValueError, match="min_sparsity"):
        to_sparse_inference(torch.nn.Sequential(linear), 1.5)


def test_two_four_linears_are_found_and_the_conversion_is_refused_without_a_capable_gpu():
    model = make_tiny("bert")
    for t in find_targets(model, prune_embeddings=False):
        with torch.no_grad():
            t.param.mul_(nm_keep_mask(t.param.abs(), NMPattern(2, 4), t.input_dim))
    names = two_four_linears(model)
    assert "bert.encoder.layer.0.attention.self.query" in names and "classifier" in names
    reason = semi_structured_unavailable("cpu")
    assert reason is not None and "CUDA" in reason
    if not torch.cuda.is_available():
        assert "compute capability >= 8.0" in semi_structured_unavailable()
        with pytest.raises(ValueError, match="cannot run 2:4 linears: .*compute capability >= 8.0"):
            to_semi_structured(model)


@pytest.mark.parametrize("compressed", [False, True])
def test_sparse_release_loads_with_csr_linears_equal_to_the_dense_release(tmp_path, compressed):
    """End to end: prune with SparseTrainer, save a release, load it with sparse_inference=True. Exactly the linears
    at or past the break-even become CSRLinear (the unpruned feed-forward ones stay nn.Linear), and the logits equal
    those of the same release loaded dense, within 1e-4."""
    from sparse_helpers import make_trainer, sparse_args

    from smc_trainer import load_sparse_pretrained
    from smc_trainer.release.sparse_inference import BREAK_EVEN_SPARSITY

    args = sparse_args(tmp_path / "run", "omp_before", 0.9, max_steps=0, distribution="uniform",
                       prune_embeddings=False, prune_exclude="intermediate", save_compressed=compressed)
    trainer = make_trainer("bert", args)
    trainer.train()
    out = trainer.save_sparse_pretrained(str(tmp_path / "release"))
    if compressed:
        (tmp_path / "release" / "model.safetensors").unlink()  # only the compressed weights ship
    dense = load_sparse_pretrained(out).model.eval()
    sparse = load_sparse_pretrained(out, sparse_inference=True).model
    expected = {n.rsplit(".", 1)[0] for n, m in trainer.masks.masks.items()
                if 1 - m.float().mean().item() >= BREAK_EVEN_SPARSITY and n.endswith(".weight")}
    csr = {n for n, m in sparse.named_modules() if isinstance(m, CSRLinear)}
    kept_dense = {n for n, m in sparse.named_modules() if type(m) is torch.nn.Linear}
    assert csr == expected and len(csr) >= 6
    attention = sparse.bert.encoder.layer[0].attention.self  # found from the dummy inputs of the loaded model
    assert attention.query.shared_input is attention.key.shared_input is attention.value.shared_input is not None
    assert kept_dense and all("intermediate" in n for n in kept_dense)
    ids = torch.randint(3, 60, (4, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(sparse(input_ids=ids).logits, dense(input_ids=ids).logits, atol=1e-4, rtol=0)
    none = load_sparse_pretrained(out, sparse_inference=0.95).model  # a higher threshold converts nothing here
    assert not any(isinstance(m, CSRLinear) for m in none.modules())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("case", ["random", "empty_rows", "all_zero"])
def test_csr_linear_kernels_equal_the_dense_linear(dtype, case):
    """The embedding-bag kernel (float32/64; half precision summed in float32) against nn.Linear, with output
    features that keep no weight and a weight that keeps none."""
    gen = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(12, 7).to(dtype)
    with torch.no_grad():
        keep = torch.rand(7, 12, generator=gen) > 0.8
        if case == "empty_rows":
            keep[::2] = False
        if case == "all_zero":
            keep[:] = False
        linear.weight.mul_(keep)
    x = torch.randn(2, 5, 12, generator=gen).to(dtype)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    got = CSRLinear.from_linear(linear)(x)
    assert got.shape == (2, 5, 7) and got.dtype == dtype and got.is_contiguous()
    assert torch.allclose(got.float(), linear(x).float(), atol=tol)


def test_measured_break_even_converts_exactly_the_linears_the_clock_finds_faster(monkeypatch):
    """`measure_tokens`: each linear past min_sparsity is converted exactly when faster_as_csr says so."""
    from smc_trainer.release import sparse_inference as si

    model = make_tiny("bert").eval()
    _prune_linears(model, [0.9])
    square = {n for n, m in model.named_modules() if type(m) is torch.nn.Linear and m.in_features == m.out_features}
    monkeypatch.setattr(si, "faster_as_csr", lambda linear, tokens: linear.in_features == linear.out_features)
    converted = si.to_sparse_inference(model, 0.5, measure_tokens=16)
    assert set(converted) == square and square  # the fake benchmark's verdict, layer by layer
    assert {n for n, m in model.named_modules() if isinstance(m, CSRLinear)} == square
    assert any(type(m) is torch.nn.Linear for m in model.modules())
    with pytest.raises(ValueError, match="measure_tokens"):
        si.to_sparse_inference(model, 0.5, measure_tokens=0)


def test_faster_as_csr_reads_the_clock():
    from smc_trainer.release.sparse_inference import faster_as_csr

    linear = torch.nn.Linear(8, 4)
    ticks = iter(range(1000))
    # each timing reads the clock twice; with a clock that advances by one per read every run lasts 1 "second",
    # so CSR is never strictly faster
    assert not faster_as_csr(linear, tokens=4, repeats=2, clock=lambda: next(ticks))


def test_load_refuses_an_unknown_sparse_inference_word(tmp_path):
    from smc_trainer import load_sparse_pretrained

    with pytest.raises(ValueError, match="'measure'"):
        load_sparse_pretrained(str(tmp_path), sparse_inference="fast")


def test_bert_feed_forward_runs_feature_major_between_its_two_converted_projections():
    """intermediate.dense -> GELU -> output.dense, both converted: the first returns a transposed view (no copy), the
    result still equals the dense model; a block with only one projection converted keeps contiguous outputs."""
    model = make_tiny("bert").eval()
    _prune_linears(model, [0.9])
    with torch.no_grad():
        layer = model.bert.encoder.layer[1]
        out_weight = layer.output.dense.weight
        out_weight.copy_(torch.randn_like(out_weight))  # dense again: not converted
    ids = torch.randint(3, 60, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dense = model(input_ids=ids).logits
    converted = to_sparse_inference(model, min_sparsity=0.85)
    chained = [n for n, m in model.named_modules() if isinstance(m, CSRLinear) and m.feature_major_output]
    assert chained == ["bert.encoder.layer.0.intermediate.dense"]
    assert "bert.encoder.layer.1.intermediate.dense" in converted  # converted, but its consumer is dense
    first = model.bert.encoder.layer[0].intermediate.dense
    x = torch.randn(3, 9, first.in_features)
    with torch.no_grad():
        assert not first(x).is_contiguous() and first(x).shape == (3, 9, first.out_features)
        assert torch.allclose(model(input_ids=ids).logits, dense, atol=1e-4, rtol=0)


def _qkv(model, layer):
    attention = model.bert.encoder.layer[layer].attention.self
    return attention.query, attention.key, attention.value


@pytest.mark.parametrize("block_min", [None, 4])
def test_query_key_value_sharing_an_input_run_as_one_matrix_also_when_only_some_are_converted(block_min, monkeypatch):
    """Layer 0: query, key and value converted, one group; layer 1: the query stays dense, key and value form a
    group of two. Found from one forward of the dummy inputs; the model equals the dense one within 1e-4, and each
    member's weight and repr stay its own."""
    from smc_trainer.release import sparse_inference as si

    if block_min is not None:
        monkeypatch.setattr(si, "SEQUENCE_BLOCK_MIN", block_min)
    model = make_tiny("bert").eval()
    _prune_linears(model, [0.9])
    with torch.no_grad():
        query = _qkv(model, 1)[0].weight
        query.copy_(torch.randn_like(query))  # dense again: not converted
    ids = torch.randint(3, 60, (3, 9), generator=torch.Generator().manual_seed(0))
    weights = [m.weight.detach().clone() for m in _qkv(model, 0)]
    with torch.no_grad():
        dense = model(input_ids=ids).logits
    converted = to_sparse_inference(model, min_sparsity=0.85)
    assert "bert.encoder.layer.1.attention.self.query" not in converted
    first, second = _qkv(model, 0), _qkv(model, 1)
    assert all(isinstance(m, CSRLinear) for m in first + second[1:]) and type(second[0]) is torch.nn.Linear
    assert first[0].shared_input is first[1].shared_input is first[2].shared_input is not None
    assert second[1].shared_input is second[2].shared_input is not None
    assert second[1].shared_input.names == ["bert.encoder.layer.1.attention.self.key",
                                            "bert.encoder.layer.1.attention.self.value"]
    assert first[0].shared_input is not second[1].shared_input
    grouped = {n for n, m in model.named_modules() if isinstance(m, CSRLinear) and m.shared_input is not None}
    assert all(".attention.self." in n for n in grouped)  # nothing else reads a shared input
    assert "shared_input=" in repr(first[0]) and first[0].weight.layout == torch.sparse_csr
    group_values = first[0].shared_input.weight.values()
    for member, weight in zip(first, weights):  # each its own weight, stored once: views of the group's arrays
        assert torch.equal(member.weight.to_dense(), weight)
        assert member.weight.values().untyped_storage().data_ptr() == group_values.untyped_storage().data_ptr()
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, dense, atol=1e-4, rtol=0)
        assert torch.allclose(model(input_ids=ids[:2]).logits, dense[:2], atol=1e-4, rtol=0)  # another batch size
    with torch.inference_mode():  # inference tensors have no version counter
        assert torch.allclose(model(input_ids=ids).logits, dense, atol=1e-4, rtol=0)
    monkeypatch.setattr(si, "MAX_REPEATED_INDICES", 1)  # one sequence per embedding-bag call
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, dense, atol=1e-4, rtol=0)


def test_a_group_member_called_with_another_input_recomputes():
    """The group serves a cached output only for the very tensor it computed, unmodified since."""
    model = make_tiny("bert").eval()
    _prune_linears(model, [0.9])
    reference = [torch.nn.Linear(16, 16) for _ in range(3)]
    for ref, m in zip(reference, _qkv(model, 0)):
        ref.load_state_dict(m.state_dict())
    to_sparse_inference(model, min_sparsity=0.85)
    query, key, value = _qkv(model, 0)
    assert query.shared_input is not None
    x, y = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    with torch.no_grad():
        assert torch.allclose(query(x), reference[0](x), atol=1e-5)
        assert torch.allclose(key(y), reference[1](y), atol=1e-5)  # another tensor
        x.mul_(2)  # modified in place after the group computed for it
        assert torch.allclose(key(x), reference[1](x), atol=1e-5)
        assert torch.allclose(value(x), reference[2](x), atol=1e-5)
        assert torch.allclose(query(x), reference[0](x), atol=1e-5)  # twice: the group recomputes


class _TwoInputs(torch.nn.Module):
    """a reads x, b reads another tensor of the same shape and values, c reads x again."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (torch.nn.Linear(8, 8) for _ in range(3))

    def forward(self, x):
        return self.a(x) + self.b(x.clone()) + self.c(x)


def test_no_group_is_built_where_inputs_differ():
    model = _TwoInputs().eval()
    _prune_linears(model, [0.9])
    x = torch.randn(2, 3, 8)
    with torch.no_grad():
        dense = model(x)
    assert set(to_sparse_inference(model, 0.85, example_inputs={"x": x})) == {"a", "b", "c"}
    assert model.a.shared_input is model.c.shared_input is not None and model.b.shared_input is None
    with torch.no_grad():
        assert torch.allclose(model(x), dense, atol=1e-5)
    no_example = _TwoInputs().eval()  # no dummy_inputs and no example: nothing is grouped
    _prune_linears(no_example, [0.9])
    to_sparse_inference(no_example, 0.85)
    assert all(m.shared_input is None for m in (no_example.a, no_example.b, no_example.c))


def test_cross_attention_groups_only_key_and_value_of_the_encoder_states():
    """A BERT decoder with cross-attention: the self-attention's query, key and value share the decoder states;
    in the cross-attention the query reads the decoder states and key and value the encoder's, so only they pair."""
    from tiny_models import _bert_config
    from transformers import BertModel

    model = BertModel(_bert_config(is_decoder=True, add_cross_attention=True)).eval()
    _prune_linears(model, [0.9])
    ids = torch.randint(3, 60, (2, 7), generator=torch.Generator().manual_seed(0))
    encoder_states = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    example = {"input_ids": ids, "encoder_hidden_states": encoder_states}
    with torch.no_grad():
        dense = model(**example).last_hidden_state
    to_sparse_inference(model, 0.85, example_inputs=example)
    layer = model.encoder.layer[0]
    cross = layer.crossattention.self
    assert cross.query.shared_input is None
    assert cross.key.shared_input is cross.value.shared_input is not None
    assert cross.key.shared_input is not layer.attention.self.query.shared_input is not None
    with torch.no_grad():
        assert torch.allclose(model(**example).last_hidden_state, dense, atol=1e-4, rtol=0)


def test_loading_other_weights_into_a_converted_model_reaches_every_kernel():
    """load_state_dict copies into the CSR buffers in place (same sparsity pattern): plain CSRLinears and shared-input
    groups compute with the new values, not with cached copies; after `.double()` replaces every buffer, the groups
    join the new weights."""
    import copy

    model = make_tiny("bert").eval()
    _prune_linears(model, [0.9])
    other = copy.deepcopy(model)
    with torch.no_grad():
        for m in other.modules():
            if type(m) is torch.nn.Linear:
                m.weight.mul_(2.0)
                m.bias.add_(1.0)
    ids = torch.randint(3, 60, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = other(input_ids=ids).logits
        to_sparse_inference(model, 0.85)
        assert model.bert.encoder.layer[0].attention.self.query.shared_input is not None
        model(input_ids=ids)  # fill the caches
        to_sparse_inference(other, 0.85)
        model.load_state_dict(other.state_dict())
        assert torch.allclose(model(input_ids=ids).logits, expected, atol=1e-4, rtol=0)
        model.double()
        assert torch.allclose(model(input_ids=ids).logits.float(), expected, atol=1e-4, rtol=0)
