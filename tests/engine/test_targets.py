"""Which parameters are prunable: `find_targets` on every tiny model, checked by walking modules here."""

from __future__ import annotations

import re

import pytest
import torch
from tiny_models import CLASSIFIER_MODELS, dummy_inputs, make_tiny
from torch import nn
from transformers.pytorch_utils import Conv1D

from smc_trainer.engine.targets import PruneTarget, find_targets, is_decoder_lm

PRUNABLE = (nn.Linear, nn.Embedding, Conv1D)


def opt_in(model: nn.Module) -> dict[str, str]:
    """The keywords that make every candidate weight prunable: a decoder LM keeps everything outside its blocks
    dense unless `include` names it (tests/engine/test_causal_lm_targets.py); other models prune all by default."""
    return {"include": "."} if is_decoder_lm(model) else {}


def expected_weights(model: nn.Module) -> dict[int, tuple[str, nn.Module]]:
    """id(weight) -> (first module name, module) for every 2-D Linear/Conv1D/Embedding weight."""
    out: dict[int, tuple[str, nn.Module]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        w = getattr(module, "weight", None)
        if isinstance(module, PRUNABLE) and isinstance(w, nn.Parameter) and w.dim() == 2 and id(w) not in out:
            out[id(w)] = (name, module)
    return out


def embedding_weight_ids(model: nn.Module) -> set[int]:
    return {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}


def base_param_ids(model: nn.Module) -> set[int]:
    return {id(p) for p in model.base_model.parameters()}


def ids(targets) -> list[int]:
    return [id(t.param) for t in targets]


def test_tiny_models_run_and_are_tiny(tiny_model):
    name, model = tiny_model
    with torch.no_grad():
        out = model(**dummy_inputs(name))
    assert torch.isfinite(out.logits).all()
    assert max(p.numel() for p in model.parameters()) <= 2048
    # seeded: a second build has identical weights
    again = make_tiny(name)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))


def test_every_prunable_weight_is_a_target_and_nothing_else(tiny_model):
    name, model = tiny_model
    targets = find_targets(model, **opt_in(model))
    expected = expected_weights(model)
    got = ids(targets)
    assert len(got) == len(set(got)), f"{name}: a weight appears twice"
    assert set(got) == set(expected), f"{name}: targets differ from the 2-D Linear/Conv1D/Embedding weights"
    assert len({t.name for t in targets}) == len(targets)
    params = dict(model.named_parameters())  # deduplicated: first name of each tensor
    for t in targets:
        assert isinstance(t, PruneTarget)
        assert t.param.dim() == 2
        assert t.numel == t.param.numel()
        # the name is a real parameter name pointing at this very tensor
        assert t.name in params and params[t.name] is t.param, t.name
        assert t.name.endswith("weight")
        module = expected[id(t.param)][1]
        assert isinstance(module, PRUNABLE) and module.weight is t.param


def test_no_bias_or_norm_weight_is_a_target(tiny_model):
    name, model = tiny_model
    target_ids = set(ids(find_targets(model)))
    prunable_weight_ids = {id(m.weight) for m in model.modules() if isinstance(m, PRUNABLE)}
    norms = 0
    for mod_name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if pname == "bias":
                assert id(p) not in target_ids, f"{name}: bias {mod_name}.{pname} is a target"
            elif not isinstance(module, PRUNABLE) and id(p) not in prunable_weight_ids:
                assert id(p) not in target_ids, f"{name}: {type(module).__name__} {mod_name}.{pname} is a target"
        if "norm" in type(module).__name__.lower():
            norms += 1
            assert all(id(p) not in target_ids for p in module.parameters(recurse=False)), f"{name}: {mod_name}"
    assert norms > 0, "every tiny transformer has norm layers"
    for pname, p in model.named_parameters():
        if p.dim() != 2:
            assert id(p) not in target_ids, pname


def test_targets_follow_named_modules_order(tiny_model):
    _, model = tiny_model
    order = {}
    for _, module in model.named_modules():
        w = getattr(module, "weight", None)
        if w is not None and id(w) not in order:
            order[id(w)] = len(order)
    positions = [order[id(t.param)] for t in find_targets(model)]
    assert positions == sorted(positions)


def test_tied_lm_head_appears_once(tiny_gpt2_lm, tiny_mbart, tiny_t5):
    for model in (tiny_gpt2_lm, tiny_mbart, tiny_t5):
        out = model.get_output_embeddings().weight
        assert out is model.get_input_embeddings().weight  # the fixtures are tied
        targets = find_targets(model, **opt_in(model))
        assert sum(t.param is out for t in targets) == 1
        assert len(set(ids(targets))) == len(targets)
    names = [t.name for t in find_targets(tiny_gpt2_lm, include=".")]
    assert "transformer.wte.weight" in names and "lm_head.weight" not in names


def test_embeddings_group_is_exactly_the_embedding_weights(tiny_model):
    name, model = tiny_model
    targets = find_targets(model, **opt_in(model))
    got = {id(t.param) for t in targets if t.group == "embeddings"}
    assert got == embedding_weight_ids(model), (
        f"{name}: embeddings group {sorted(t.name for t in targets if t.group == 'embeddings')}"
    )


@pytest.mark.parametrize("name", CLASSIFIER_MODELS)
def test_head_group_is_the_classifier_outside_the_base_model(name):
    model = make_tiny(name)
    base = base_param_ids(model)
    expected = {id(m.weight) for m in model.modules()
                if isinstance(m, PRUNABLE) and m.weight.dim() == 2 and id(m.weight) not in base}
    assert expected, "the classifier models have head weights"
    targets = find_targets(model)
    head = {id(t.param) for t in targets if t.group == "head"}
    assert head == expected
    head_names = sorted(t.name for t in targets if t.group == "head")
    prefix = {"bert": "classifier.", "bert_mc": "classifier.", "roberta": "classifier.", "gpt2": "score.",
              "esm": "classifier."}[name]
    assert head_names and all(n.startswith(prefix) for n in head_names), head_names
    # and nothing inside the base model is called head
    assert not (head & base)


def test_layer_groups_name_the_block_index(tiny_bert):
    for t in find_targets(tiny_bert):
        m = re.search(r"\.layer\.(\d+)\.", t.name)
        if m:
            assert t.group == f"layer_{int(m.group(1)):02d}", (t.name, t.group)


def test_prune_embeddings_false_removes_exactly_the_embeddings(tiny_model):
    name, model = tiny_model
    full = find_targets(model, **opt_in(model))
    without = find_targets(model, prune_embeddings=False, **opt_in(model))
    assert [t.name for t in without] == [t.name for t in full if t.group != "embeddings"]
    assert not (set(ids(without)) & embedding_weight_ids(model)), f"{name}: an nn.Embedding weight is still pruned"


def test_prune_heads_false_removes_exactly_the_head(tiny_model):
    name, model = tiny_model
    full = find_targets(model, **opt_in(model))
    without = find_targets(model, prune_heads=False, **opt_in(model))
    assert [t.name for t in without] == [t.name for t in full if t.group != "head"]
    if name in CLASSIFIER_MODELS:
        assert len(without) < len(full)
        base = base_param_ids(model)
        assert all(id(t.param) in base for t in without)


def test_both_flags_off(tiny_bert):
    targets = find_targets(tiny_bert, prune_embeddings=False, prune_heads=False)
    assert targets and all(t.group not in ("embeddings", "head") for t in targets)
    assert all(isinstance(dict(tiny_bert.named_modules())[t.name[: -len(".weight")]], nn.Linear) for t in targets)


@pytest.mark.parametrize("pattern", [r"attention", r"\.0\.", r"intermediate|output\.dense", r"^bert\.embeddings",
                                     r"classifier"])
def test_include_filters_by_re_search(tiny_bert, pattern):
    full = find_targets(tiny_bert)
    got = find_targets(tiny_bert, include=pattern)
    assert [t.name for t in got] == [t.name for t in full if re.search(pattern, t.name)]
    assert got


@pytest.mark.parametrize("pattern", [r"attention", r"\.1\.", r"embeddings", r"dense"])
def test_exclude_filters_by_re_search(tiny_bert, pattern):
    full = find_targets(tiny_bert)
    got = find_targets(tiny_bert, exclude=pattern)
    assert [t.name for t in got] == [t.name for t in full if not re.search(pattern, t.name)]


def test_include_and_exclude_combine(tiny_gpt2):
    full = find_targets(tiny_gpt2)
    got = find_targets(tiny_gpt2, include=r"\.h\.", exclude=r"c_proj")
    assert [t.name for t in got] == [t.name for t in full if ".h." in t.name and "c_proj" not in t.name]
    assert got and all(isinstance(dict(tiny_gpt2.named_modules())[t.name[:-7]], Conv1D) for t in got)


def test_regex_is_search_not_fullmatch(tiny_bert):
    # "query" matches only in the middle of the names: re.match/fullmatch would find nothing
    got = find_targets(tiny_bert, include="query")
    assert len(got) == tiny_bert.config.num_hidden_layers


def test_regex_filters_apply_after_the_group_flags(tiny_bert):
    got = find_targets(tiny_bert, prune_embeddings=False, include=r"embeddings|query")
    assert got and all("embeddings" not in t.name for t in got)


@pytest.mark.parametrize("flag,kw", [("--prune_include", "include"), ("--prune_exclude", "exclude")])
def test_regex_matching_nothing_raises_with_flag_and_pattern(tiny_bert, flag, kw):
    pattern = "no_such_param_xyz"
    with pytest.raises(ValueError) as err:
        find_targets(tiny_bert, **{kw: pattern})
    assert flag in str(err.value)
    assert pattern in str(err.value)
    # a pattern that matches only a non-prunable parameter (a LayerNorm) also matches nothing prunable
    with pytest.raises(ValueError, match=flag):
        find_targets(tiny_bert, **{kw: "LayerNorm"})


@pytest.mark.parametrize("flag,kw", [("--prune_include", "include"), ("--prune_exclude", "exclude")])
def test_invalid_regex_raises_value_error(tiny_bert, flag, kw):
    with pytest.raises(ValueError) as err:
        find_targets(tiny_bert, **{kw: "(unclosed"})
    assert flag in str(err.value)
    assert "(unclosed" in str(err.value)


def test_model_without_prunable_modules_raises():
    model = nn.Sequential(nn.LayerNorm(4))
    with pytest.raises(ValueError, match="no prunable parameters"):
        find_targets(model)


def test_one_dimensional_only_model_raises():
    model = nn.Sequential(nn.LayerNorm(4), nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="no prunable parameters"):
        find_targets(model)


def test_excluding_everything_raises(tiny_bert):
    with pytest.raises(ValueError, match="no prunable parameters"):
        find_targets(tiny_bert, exclude=r".")
    with pytest.raises(ValueError, match="no prunable parameters"):
        find_targets(tiny_bert, include=r"classifier", prune_heads=False)


def test_plain_torch_model(tiny_bert):
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 8), nn.ReLU(), nn.LayerNorm(8), nn.Linear(8, 2))
    targets = find_targets(model)
    assert [t.name for t in targets] == ["0.weight", "1.weight", "4.weight"]
    assert targets[0].group == "embeddings"
    assert all(t.group != "embeddings" for t in targets[1:])
