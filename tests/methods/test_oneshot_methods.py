"""wanda_* / sparsegpt_* end to end on tiny models: calibration hooks against naive oracles, the sequential order
of SparseGPT, N:M masks kept through training, and the refusals (before any work) with their reasons."""

from __future__ import annotations

import pytest
import torch
from sparse_helpers import make_trainer, pruned_leaks, sparse_args, toy_dataset, train_with_recorder
from tiny_models import make_tiny

from smc_trainer import SparseTrainingArguments
from smc_trainer.engine.patterns import NMPattern, nm_violations
from smc_trainer.engine.selection import keep_count
from smc_trainer.engine.sparsity import SparsityConfig
from smc_trainer.engine.targets import find_targets
from smc_trainer.training.calibration import HookCalibrator, module_of


def _batches(n=12, seq=8, seed=1, pad_from=None):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 60, (n, seq), generator=gen)
    batch = {"input_ids": ids}
    if pad_from is not None:
        mask = torch.ones(n, seq, dtype=torch.long)
        mask[::2, pad_from:] = 0
        ids[::2, pad_from:] = 0
        batch["attention_mask"] = mask
    return [batch]


def _naive_inputs(model, targets, batches):
    """Every linear's full input, captured by plain hooks (rows = all tokens)."""
    seen: dict[str, list[torch.Tensor]] = {t.name: [] for t in targets}
    handles = [module_of(model, t).register_forward_pre_hook(
        lambda m, inp, name=t.name: seen[name].append(inp[0].detach().reshape(-1, inp[0].shape[-1])))
        for t in targets]
    model.eval()
    with torch.no_grad():
        for b in batches:
            model(**b)
    for h in handles:
        h.remove()
    return {n: torch.cat(v) for n, v in seen.items()}


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_wanda_masks_equal_a_naive_per_row_sort(tmp_path, arch):
    model = make_tiny(arch)
    targets = find_targets(model, prune_embeddings=False)
    batches = _batches()
    calibrator = HookCalibrator(model, lambda: iter(batches))
    args = sparse_args(tmp_path, "wanda_before", 0.59)
    from smc_trainer.engine.masks import MaskSet
    from smc_trainer.methods import get_method_class
    from smc_trainer.methods.base import SparseContext

    ctx = SparseContext(targets, MaskSet(targets), SparsityConfig.from_flags(args), 0, lambda n: None,
                        calibrator=calibrator)
    masks = get_method_class("wanda_before").from_args(args).initial_masks(ctx)
    inputs = _naive_inputs(model, targets, batches)
    for t in targets:
        w = t.param.detach() if t.input_dim == 1 else t.param.detach().t()
        norm = torch.linalg.vector_norm(inputs[t.name].double(), dim=0)
        score = (w.double().abs() * norm).tolist()
        rows, cols = w.shape
        keep = keep_count(0.41, t.numel)  # uniform: every layer keeps round(0.41 * N_l)
        expected = torch.zeros(rows, cols, dtype=torch.bool)
        for r in range(rows):
            k = keep // rows + (1 if r < keep % rows else 0)
            for j in sorted(range(cols), key=lambda j: (-score[r][j], j))[:k]:
                expected[r, j] = True
        got = masks[t.name] if t.input_dim == 1 else masks[t.name].t()
        differ = (got != expected).nonzero().tolist()
        # float32 statistics may swap two scores equal to within rounding; nothing else may differ
        for r, j in differ:
            kth = sorted(score[r], reverse=True)[keep // rows + (1 if r < keep % rows else 0) - 1]
            assert abs(score[r][j] - kth) <= 1e-5 * abs(kth), (t.name, r, j, score[r][j], kth)
        assert len(differ) <= 2, t.name


def test_padding_tokens_are_left_out_of_the_statistics():
    model = make_tiny("bert")
    targets = find_targets(model, prune_embeddings=False, prune_heads=False)
    padded = _batches(pad_from=5)
    short = [{"input_ids": padded[0]["input_ids"][i:i + 1, : 5 if i % 2 == 0 else 8]} for i in range(12)]
    norms_padded = HookCalibrator(model, lambda: iter(padded)).input_norms(targets)
    norms_short = HookCalibrator(model, lambda: iter(short)).input_norms(targets)
    for t in targets:
        assert torch.allclose(norms_padded[t.name], norms_short[t.name], rtol=1e-4, atol=1e-5), t.name


def test_sparsegpt_calibrates_each_block_on_the_pruned_blocks_before_it():
    model = make_tiny("bert")
    targets = find_targets(model, prune_embeddings=False)
    batches = _batches()
    calibrator = HookCalibrator(model, lambda: iter(batches))
    order, got = [], {}

    def prune(group, hessian):
        for t in group:
            order.append(t.group)
            got[t.name] = hessian.clone()
            with torch.no_grad():  # prune: zero the smaller half of the weight
                t.param.mul_(t.param.abs() >= t.param.abs().median())
            if t.name.endswith("layer.0.output.dense.weight"):  # layer 0 fully pruned: record what layer 1 now sees
                query = targets_by_name["bert.encoder.layer.1.attention.self.query.weight"]
                got["expected_next"] = _naive_inputs(model, [query], batches)
    targets_by_name = {t.name: t for t in targets}
    dense_inputs = _naive_inputs(make_tiny("bert"), find_targets(make_tiny("bert"), prune_embeddings=False), batches)
    calibrator.sequential(targets, prune)
    assert order == sorted(order, key=["layer_00", "layer_01", "other", "head"].index)
    name = "bert.encoder.layer.1.attention.self.query.weight"
    x = got["expected_next"][name].double()
    assert torch.allclose(got[name].double(), x.t() @ x, rtol=1e-4, atol=1e-4)
    dense = dense_inputs[name].double()
    assert not torch.allclose(got[name].double(), dense.t() @ dense, rtol=1e-3, atol=1e-3)


NM_CASES = [(m, {}) for m in ("omp_before", "random_before", "snip", "omp_after", "wanda_before", "sparsegpt_before",
                               "sparsegpt_after", "lth", "lrr")] + [  # lth/lrr: a chain's last round (the pattern's)
    ("lrr", {"criterion": "snip"}), ("lrr", {"criterion": "obert", "obert_num_grads": 4, "obert_block_size": 4})]


@pytest.mark.parametrize("method,overrides", NM_CASES, ids=[f"{m}-{o.get('criterion', '')}" for m, o in NM_CASES])
@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_nm_pattern_holds_in_every_group_through_training(tmp_path, method, overrides, arch):
    pattern = NMPattern(2, 4)
    trainer = make_trainer(arch, sparse_args(tmp_path, method, 0.5, sparsity_pattern="2:4", **overrides))
    rec = train_with_recorder(trainer)
    for masks in rec.masks:
        for t in trainer.masks.targets:
            assert nm_violations(masks[t.name], pattern, t.input_dim) == 0, t.name
    assert sum(rec.counts[-1].values()) == trainer.masks.total // 2
    assert pruned_leaks(trainer) == []


def test_sparsegpt_beats_wanda_and_magnitude_on_the_calibration_error():
    """On the tiny model the layer error ||W X - W' X||^2 of the first block, calibrated on the same batches."""
    from smc_trainer.engine.oneshot.sparsegpt import reconstruction_error, sparsegpt_prune
    from smc_trainer.engine.oneshot.wanda import row_keep_masks, wanda_scores

    model = make_tiny("bert")
    targets = [t for t in find_targets(model, prune_embeddings=False) if t.group == "layer_00"]
    inputs = _naive_inputs(model, targets, _batches(n=32, seq=16))
    for t in targets:
        w, x = t.param.detach().double(), inputs[t.name].double()
        h = x.t() @ x
        keep = t.numel // 2
        new, _ = sparsegpt_prune(w, h, keep=keep, blocksize=8)
        wanda = w * row_keep_masks(wanda_scores(w, torch.linalg.vector_norm(x, dim=0)), keep)
        magnitude = w * row_keep_masks(w.abs(), keep)
        e_sgpt, e_wanda, e_mag = (reconstruction_error(w, v, h) for v in (new, wanda, magnitude))
        assert e_sgpt < e_wanda <= e_mag * 1.0001, t.name


REFUSALS = [
    (dict(sparse_method="wanda_before", sparsity=0.5, distribution="uniform"), "--prune_embeddings false"),
    (dict(sparse_method="wanda_after", sparsity=0.5, prune_embeddings=False), "--distribution uniform"),
    (dict(sparse_method="sparsegpt_before", sparsity=0.5, prune_embeddings=False), "layer by layer"),
    (dict(sparse_method="gmp", sparsity=0.5, sparsity_pattern="2:4"), "gradual schedule"),
    (dict(sparse_method="rigl", sparsity=0.5, sparsity_pattern="2:4"), "drop-and-grow"),
    (dict(sparse_method="lth", sparsity=0.36, sparsity_pattern="2:4"), "sparsity 0.5; got --sparsity 0.36"),
    (dict(sparse_method="lrr", sparsity=0.488, sparsity_pattern="2:4", distribution="erk"), "sparsity 0.5; got"),
    (dict(sparse_method="lrr", sparsity=0.5, sparsity_pattern="2:4", distribution="erk"), "global or uniform"),
    (dict(sparse_method="omp_before", sparsity=0.3, sparsity_pattern="2:4"), "sparsity 0.5; got --sparsity 0.3"),
    (dict(sparse_method="omp_before", sparsity=0.5, sparsity_pattern="2:4", distribution="erk"), "global or uniform"),
    (dict(sparse_method="omp_before", sparsity=0.5, sparsity_pattern="2:3:4"), "N:M"),
    (dict(sparse_method="omp_before", sparsity=0.5, distribution="owl"), "wanda_before"),
    (dict(sparse_method="wanda_before", sparsity=0.5, prune_embeddings=False, distribution="owl", owl_lambda=-1.0),
     "--owl_lambda"),
    (dict(sparse_method="omp_before", sparsity=0.5, sparsity_pattern="2:4", export_semi_structured=True),
     "compute capability >= 8.0"),
    (dict(sparse_method="omp_before", sparsity=0.75, sparsity_pattern="1:4", export_semi_structured=True), "2:4"),
]


@pytest.mark.parametrize("kw,message", REFUSALS, ids=[m for _, m in REFUSALS])
def test_refusals_name_the_flag_and_the_way_out(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        SparseTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **kw)


@pytest.mark.parametrize("method,overrides", [("omp_before", {}), ("lrr", {"criterion": "snip"})])
def test_shapes_not_divisible_by_m_are_refused_before_training(tmp_path, method, overrides):
    args = sparse_args(tmp_path, method, 1 - 2 / 32, sparsity_pattern="2:32", **overrides)
    with pytest.raises(ValueError, match=r"divisible by 32.*bert\.embeddings\.word_embeddings\.weight \(64, 16\)"):
        make_trainer("bert", args)


def test_non_linear_targets_are_refused_before_calibration(tmp_path):
    from smc_trainer import SparseTrainer

    model = torch.nn.Sequential(torch.nn.LSTM(8, 8, batch_first=True))
    args = sparse_args(tmp_path, "sparsegpt_before", 0.5)
    trainer = SparseTrainer(model=model, args=args, train_dataset=toy_dataset())
    with pytest.raises(ValueError, match="LSTM, not a Linear"):
        trainer.sparse_method.initial_masks(trainer.sparsity_callback.context(8))


@pytest.mark.parametrize("alias,method,criterion", [
    ("wanda_before", "omp_before", "wanda"), ("wanda_after", "omp_after", "wanda"),
    ("sparsegpt_before", "omp_before", "sparsegpt"), ("sparsegpt_after", "omp_after", "sparsegpt"),
])
def test_old_names_mean_exactly_the_method_with_the_criterion(tmp_path, alias, method, criterion):
    """wanda_after == omp_after --criterion wanda (and the three others): same masks, same (SparseGPT-updated)
    weights, bit for bit, pruned with --max_steps 0 so nothing else moves them."""
    a = make_trainer("bert", sparse_args(tmp_path / "a", alias, 0.5, max_steps=0))
    a.train()
    b = make_trainer("bert", sparse_args(tmp_path / "b", method, 0.5, criterion=criterion, max_steps=0))
    b.train()
    assert a.state.global_step == b.state.global_step == 0
    assert a.sparse_method.criterion.name == b.sparse_method.criterion.name == criterion
    assert a.masks.masks.keys() == b.masks.masks.keys() and a.masks.masks
    for name in a.masks.masks:
        assert torch.equal(a.masks.masks[name], b.masks.masks[name]), name
    for (name, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(pa, pb), name


@pytest.mark.parametrize("method,flags,needle", [
    ("gmp", dict(criterion="wanda"), "one-shot method"),
    ("lrr", dict(criterion="sparsegpt", sparsity=0.5904), "one-shot method"),
    ("rigl", dict(criterion="wanda"), "fixed"),
    ("lth", dict(criterion="sparsegpt", sparsity=0.5904), "fixed"),
    ("wanda_after", dict(criterion="magnitude"), "fixed"),
    ("omp_after", dict(criterion="wanda", prune_embeddings=True), "prune_embeddings false"),
    ("omp_before", dict(criterion="wanda", distribution="global"), "per-layer budgets"),
    ("omp_after", dict(criterion="sparsegpt", distribution="global"), "its own budget"),
    ("omp_after", dict(criterion="sparsegpt", sparsegpt_blocksize=0), "sparsegpt_blocksize"),
    ("omp_after", dict(criterion="wanda", calibration_samples=0), "calibration_samples"),
    ("omp_after", dict(distribution="owl"), "--criterion wanda or sparsegpt"),
    ("snip", dict(distribution="owl"), "--criterion wanda or sparsegpt"),
])
def test_activation_criteria_refuse_invalid_pairs_at_parse_time(tmp_path, method, flags, needle):
    with pytest.raises(ValueError, match=needle):
        sparse_args(tmp_path, method, flags.pop("sparsity", 0.5), **flags)


def test_activation_criteria_with_owl_and_a_one_shot_method_are_accepted(tmp_path):
    args = sparse_args(tmp_path, "omp_after", 0.5, criterion="wanda", distribution="owl")
    assert args.criterion == "wanda" and args.distribution == "owl"
