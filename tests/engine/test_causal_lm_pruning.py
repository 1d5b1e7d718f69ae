"""One-shot pruning of tiny Llama, Qwen2, Mistral, OPT and GPT-2 through the methods' own path (`omp_before`,
`wanda_before`, `sparsegpt_before`: the method's `initial_masks` on the calibrator SparseTrainer builds, the masks
installed by `MaskSet.set_masks` as the SparsityCallback does), for every criterion x pattern, on the default
prunable set (the decoder blocks' linears). Checked by hand here: exact kept counts, N of every M along the input
dimension, the zeros in the weights, the embeddings and lm_head bit for bit, and the cached block-by-block
calibration against the whole-model passes."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from llm_helpers import BYTES, CAUSAL_ARCHS, tiny_causal_lm
from sparse_helpers import sparse_args

from smc_trainer.engine.masks import MaskSet
from smc_trainer.engine.sparsity import SparsityConfig
from smc_trainer.engine.targets import PruneTarget
from smc_trainer.methods import get_method_class
from smc_trainer.methods.base import SparseContext
from smc_trainer.training.calibration import HookCalibrator

METHODS = {"magnitude": "omp_before", "wanda": "wanda_before", "sparsegpt": "sparsegpt_before"}
# magnitude: one global threshold (the paper's OMP); wanda / sparsegpt: the references' per-layer budgets
DISTRIBUTION = {"magnitude": "global", "wanda": "uniform", "sparsegpt": "uniform"}
PATTERNS = ("unstructured", "2:4", "4:8")
SPARSITY = Fraction(59, 100)  # unstructured; N:M runs at 1 - N/M


def _batches() -> list[dict[str, torch.Tensor]]:
    """Two batches of 4 byte-token sequences of 12, right-padded (the padding is left out of the statistics)."""
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, BYTES, (8, 12), generator=gen)
    mask = torch.ones(8, 12, dtype=torch.long)
    mask[1::2, 9:] = 0
    ids[mask == 0] = BYTES  # <pad>
    return [{"input_ids": ids[:4], "attention_mask": mask[:4]}, {"input_ids": ids[4:], "attention_mask": mask[4:]}]


def _sparsity(pattern: str) -> Fraction:
    if pattern == "unstructured":
        return SPARSITY
    n, m = map(int, pattern.split(":"))
    return 1 - Fraction(n, m)


def prune(tmp_path, arch: str, criterion: str, pattern: str, cached: bool = True):
    """(model, targets, masks) after the criterion's one-shot method on the default prunable set."""
    model = tiny_causal_lm(arch)
    method = METHODS[criterion]
    args = sparse_args(tmp_path, method, float(_sparsity(pattern)), distribution=DISTRIBUTION[criterion],
                       sparsity_pattern=pattern)
    sparsity = SparsityConfig.from_flags(args)
    targets = sparsity.targets(model)
    batches = _batches()
    calibrator = HookCalibrator(model, lambda: iter(batches), cache_inputs=cached)
    masks = MaskSet(targets)
    ctx = SparseContext(targets, masks, sparsity, 0, lambda n: None, calibrator=calibrator)
    masks.set_masks(get_method_class(method).from_args(args).initial_masks(ctx))
    return model, targets, masks.masks


def round_half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


def uniform_counts(targets: list[PruneTarget], density: Fraction) -> dict[str, int]:
    """The uniform distribution's budgets by hand: floor(d x N_l) per layer, then one more to the layers with the
    largest remainders (earlier layer first on ties) until they sum to round-half-up(d x N) over the set."""
    counts = {t.name: math.floor(density * t.numel) for t in targets}
    remainder = {t.name: density * t.numel - counts[t.name] for t in targets}
    missing = round_half_up(density * sum(t.numel for t in targets)) - sum(counts.values())
    order = sorted(range(len(targets)), key=lambda i: (-remainder[targets[i].name], i))
    for i in order[:missing]:
        counts[targets[i].name] += 1
    return counts


def linear_layout(t: PruneTarget, tensor: torch.Tensor) -> torch.Tensor:
    """[out, in] (a GPT-2 Conv1D stores [in, out])."""
    return tensor if t.input_dim == 1 else tensor.t()


def dense_scores(arch: str, criterion: str, targets: list[PruneTarget]) -> dict[str, torch.Tensor] | None:
    """Magnitude |W| or Wanda |W_ij| x ||X_j|| of the dense model, [out, in], by hand: the input norms from plain
    hooks over the calibration batches' non-padding tokens, in float64. None for SparseGPT (its mask follows its
    weight updates, column block by column block)."""
    if criterion == "sparsegpt":
        return None
    model = tiny_causal_lm(arch)
    params = dict(model.named_parameters())
    weights = {t.name: linear_layout(t, params[t.name].detach()).double().abs() for t in targets}
    if criterion == "magnitude":
        return weights
    squares = {t.name: torch.zeros(weights[t.name].shape[1], dtype=torch.float64) for t in targets}
    token_mask: list[torch.Tensor] = []

    def hook(module, inputs, name):
        x = inputs[0].detach().double().reshape(-1, inputs[0].shape[-1])[token_mask[0].reshape(-1) != 0]
        squares[name] += (x * x).sum(dim=0)

    handles = [model.get_submodule(t.name.rsplit(".", 1)[0]).register_forward_pre_hook(
        lambda m, i, name=t.name: hook(m, i, name)) for t in targets]
    with torch.no_grad():
        for batch in _batches():
            token_mask[:] = [batch["attention_mask"]]
            model(**batch)
    for h in handles:
        h.remove()
    return {name: w * squares[name].sqrt() for name, w in weights.items()}


def assert_keeps_the_highest(scores: torch.Tensor, mask: torch.Tensor, tol: float) -> None:
    """Within each row of `scores` / `mask` ([groups, members]) no pruned score beats a kept one (beyond `tol`,
    relative: float32 statistics against the float64 ones here)."""
    kept_min = torch.where(mask, scores, torch.inf).amin(dim=-1)
    pruned_max = torch.where(mask, -torch.inf, scores).amax(dim=-1)
    assert (kept_min >= pruned_max - tol * pruned_max.abs()).all()


def _dense_outside(model) -> dict[str, torch.Tensor]:
    """Every parameter outside the decoder blocks: embeddings, lm_head, final norm."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".h." not in n and ".layers." not in n}


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("criterion", list(METHODS))
@pytest.mark.parametrize("arch", CAUSAL_ARCHS)
def test_exact_masks_zeros_in_weights_and_dense_embeddings(tmp_path, arch, criterion, pattern):
    before = _dense_outside(tiny_causal_lm(arch))
    model, targets, masks = prune(tmp_path, arch, criterion, pattern)
    assert {t.group for t in targets} == {"layer_00", "layer_01"}  # the decoder blocks only
    density = 1 - _sparsity(pattern)
    budgets = uniform_counts(targets, density)
    if pattern == "unstructured":  # the budgets are not merely each layer's own rounding
        assert any(round_half_up(density * t.numel) != budgets[t.name] for t in targets)
    for t in targets:
        mask, weight = linear_layout(t, masks[t.name]), linear_layout(t, t.param.detach())
        assert mask.dtype == torch.bool
        assert torch.equal(weight != 0, mask), t.name  # zeros exactly where pruned, nothing else zero
        if pattern != "unstructured":
            n, m = map(int, pattern.split(":"))
            groups = (weight != 0).reshape(weight.shape[0], -1, m).sum(dim=-1)  # consecutive inputs per row
            assert groups.eq(n).all(), (t.name, groups.unique())
        elif DISTRIBUTION[criterion] == "uniform":
            keep = budgets[t.name]
            assert int(mask.sum()) == keep, t.name
            if criterion == "wanda":  # compared within each output row: the layer's budget spread over its rows
                rows = mask.sum(dim=1)
                assert set(rows.tolist()) <= {keep // mask.shape[0], keep // mask.shape[0] + 1}, t.name
    if pattern == "unstructured" and DISTRIBUTION[criterion] == "global":
        total = sum(t.numel for t in targets)
        assert sum(int(masks[t.name].sum()) for t in targets) == round_half_up(density * total)
    scores = dense_scores(arch, criterion, targets)
    if scores is not None:  # the kept weights are the highest scores of their comparison set
        tol = 0.0 if criterion == "magnitude" else 1e-5
        for t in targets:
            score, mask = scores[t.name], linear_layout(t, masks[t.name])
            if pattern != "unstructured":
                m = int(pattern.split(":")[1])
                assert_keeps_the_highest(score.reshape(-1, m), mask.reshape(-1, m), tol)
            elif criterion == "wanda":
                assert_keeps_the_highest(score, mask, tol)
        if pattern == "unstructured" and criterion == "magnitude":
            assert_keeps_the_highest(torch.cat([scores[t.name].reshape(-1) for t in targets])[None],
                                     torch.cat([linear_layout(t, masks[t.name]).reshape(-1) for t in targets])[None], 0)
    after = dict(model.named_parameters())
    for name, value in before.items():  # embeddings, lm_head, final norm: untouched bit for bit
        assert torch.equal(after[name].detach(), value), name


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("arch", CAUSAL_ARCHS)
def test_cached_block_calibration_equals_the_whole_model_path(tmp_path, arch, criterion, pattern):
    """The same masks and weights bit for bit (torch.equal, no tolerance): on CPU both paths run the same block
    forwards on the same inputs in the same order, so SparseGPT's Hessians are the same float32 sums. Wanda's norms
    come from one pass over the dense model on either calibrator (it never prunes block by block), so its case
    guards that the cache option leaves that pass alone."""
    whole, targets, whole_masks = prune(tmp_path, arch, criterion, pattern, cached=False)
    cached, _, cached_masks = prune(tmp_path, arch, criterion, pattern, cached=True)
    assert whole_masks.keys() == cached_masks.keys() == {t.name for t in targets}
    for name, mask in whole_masks.items():
        assert torch.equal(mask, cached_masks[name]), name
    cached_state = cached.state_dict()
    for name, value in whole.state_dict().items():
        assert torch.equal(cached_state[name], value), name
    if criterion == "sparsegpt":  # it updates the kept weights too: the comparison is not one of dense weights
        dense = tiny_causal_lm(arch).state_dict()
        assert all(not torch.equal(cached_state[n][mask], dense[n][mask]) for n, mask in whole_masks.items())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_sparse_trainer_prunes_only_the_blocks_calibrated_on_text_windows(tmp_path, arch):
    """The whole public path: windows of a local text file (`calibration_samples`), SparseTrainer's calibrator over
    them, sparsegpt_before at 2:4 with every prunable-set flag at its default but --prune_embeddings false (the
    activation criteria's flag check); a step at learning rate 0 leaves the dense weights as they were."""
    from datasets import Dataset
    from llm_helpers import byte_tokenizer

    from smc_trainer import SparseTrainer
    from smc_trainer.tasks.causal_lm.text_data import calibration_samples

    path = tmp_path / "calib.txt"
    path.write_text("".join(f"sentence {i} about sparse models.\n" for i in range(30)), encoding="utf-8")
    windows = calibration_samples(byte_tokenizer(), str(path), n_samples=8, seq_len=16, seed=0)
    rows = [{"input_ids": w["input_ids"].tolist(), "attention_mask": w["attention_mask"].tolist(),
             "labels": w["input_ids"].tolist()} for w in windows]
    model = tiny_causal_lm(arch)
    before = _dense_outside(model)
    args = sparse_args(tmp_path / "run", "sparsegpt_before", 0.5, sparsity_pattern="2:4", max_steps=1,
                       learning_rate=0.0, weight_decay=0.0, calibration_samples=8, per_device_eval_batch_size=4)
    trainer = SparseTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows))
    trainer.train()
    blocks = {n for n, p in model.named_parameters() if p.dim() == 2 and (".h." in n or ".layers." in n)}
    assert set(trainer.masks.masks) == blocks
    for t in trainer.masks.targets:
        weight = linear_layout(t, t.param.detach())
        assert (weight != 0).reshape(weight.shape[0], -1, 4).sum(dim=-1).eq(2).all(), t.name
    after = dict(model.named_parameters())
    for name, value in before.items():
        assert torch.equal(after[name].detach(), value), name
    # the release says what was prunable: the blocks only, not the flags' "True / True"
    from smc_trainer.release.hub import write_release_files

    out = str(tmp_path / "release")
    trainer.save_model(out)
    sparsity = write_release_files(out, trainer.masks, trainer.sparsity_metadata())
    assert sparsity["scope"]["decoder_blocks_only"] is True and sparsity["scope"]["prune_heads"] is True
    card = (tmp_path / "release" / "README.md").read_text(encoding="utf-8")
    row = "| embeddings / task head prunable | False / False (a decoder LM prunes its decoder blocks' linears only) |"
    assert row in card
