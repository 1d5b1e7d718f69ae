"""oBERT's block inverse Fisher from buffered rank-k steps against the sequential Sherman-Morrison oracle it
replaced, the batched OBS update against a dense solve, and `--obert_layerwise` against the all-at-once run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from smc_trainer.engine.criteria import ScoringView, get_criterion_class
from smc_trainer.engine.criteria.obert_fisher import BlockFisherInverse, buffer_grads, obs_blocks, spd_inverse
from smc_trainer.engine.targets import PruneTarget


def sequential_inverse(grads: list[torch.Tensor], block: int, damp: float, dtype=torch.float64) -> torch.Tensor:
    """The former path, re-derived: F^-1 = I / lambda, then per gradient F^-1 -= (F^-1 g)(F^-1 g)^T / (m + g^T F^-1 g)
    in every block (F = lambda I + (1/m) sum g g^T by Sherman-Morrison). Returns (n_blocks, B, B)."""
    m, n = len(grads), grads[0].numel()
    n_blocks = -(-n // block)
    finv = (torch.eye(block, dtype=dtype) / damp).expand(n_blocks, block, block).clone()
    for g in grads:
        gb = torch.cat([g.to(dtype), g.new_zeros(n_blocks * block - n, dtype=dtype)]).view(n_blocks, block)
        fg = torch.bmm(finv, gb.unsqueeze(2)).squeeze(2)
        finv -= fg.unsqueeze(2) * fg.unsqueeze(1) / (m + (gb * fg).sum(1)).view(-1, 1, 1)
    return finv


def rank_k_inverse(grads: list[torch.Tensor], block: int, damp: float, buffer: int,
                   dtype=torch.float64) -> BlockFisherInverse:
    inv = BlockFisherInverse(grads[0].numel(), block, damp, len(grads), dtype, torch.device("cpu"), buffer)
    for g in grads:
        inv.add_gradient(g)
    inv.finish()
    return inv


def _grads(n: int, m: int, seed: int, scale: float = 1.0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=gen, dtype=torch.float64) * scale for _ in range(m)]


@pytest.mark.parametrize(("n", "block", "m", "buffer", "damp"), [
    (37, 4, 5, 1, 0.05), (37, 4, 5, 2, 0.05), (37, 4, 5, 5, 0.05), (50, 7, 12, 5, 1e-3),
    (40, 8, 20, 7, 1e-7),  # m > B at the paper's dampening: F well-conditioned, equal to float64 precision
    (40, 8, 3, 3, 1e-3),  # m < B: F is rank m plus lambda I
])
def test_rank_k_inverse_equals_sequential_sherman_morrison(n, block, m, buffer, damp):
    grads = _grads(n, m, seed=n + m)
    want = sequential_inverse(grads, block, damp)
    got = rank_k_inverse(grads, block, damp, buffer)
    torch.testing.assert_close(got.finv * got.scale, want, rtol=1e-8, atol=1e-12 / damp)
    torch.testing.assert_close(got.diagonal(), want.diagonal(dim1=1, dim2=2).reshape(-1)[:n], rtol=1e-8, atol=0)


def test_block_size_one_is_the_closed_form_and_equals_the_sequential_one():
    grads = _grads(23, 6, seed=1, scale=1e-3)
    got = rank_k_inverse(grads, 1, 1e-7, buffer=4).diagonal()
    closed = 1.0 / (1e-7 + sum(g * g for g in grads) / len(grads))
    torch.testing.assert_close(got, closed, rtol=1e-14, atol=0)
    torch.testing.assert_close(got, sequential_inverse(grads, 1, 1e-7).reshape(-1), rtol=1e-12, atol=0)


def test_float32_at_the_paper_dampening_is_no_worse_than_the_sequential_float32_path():
    """What "equal" means in float32 at lambda = 1e-7: both paths against the float64 inverse, MiniLM-like gradient
    scale (1e-3), m > B as in the paper (m = 64, B = 16). Measured: rank-k ~1e-6 relative on the diagonal."""
    grads = _grads(16 * 64, 64, seed=2, scale=1e-3)
    exact = sequential_inverse(grads, 16, 1e-7).diagonal(dim1=1, dim2=2).reshape(-1)
    new = rank_k_inverse([g.float() for g in grads], 16, 1e-7, buffer=8, dtype=torch.float32).diagonal()
    old = sequential_inverse([g.float() for g in grads], 16, 1e-7, dtype=torch.float32).diagonal(dim1=1, dim2=2)
    err_new = float(((new.double() - exact) / exact).abs().max())
    err_old = float(((old.reshape(-1).double() - exact) / exact).abs().max())
    assert err_new < 1e-4 and err_new <= err_old


def test_half_precision_storage_keeps_its_range_at_the_paper_dampening():
    """F^-1 reaches 1/lambda = 1e7, past float16's 65504: the stored values are scaled by a power of two."""
    grads = _grads(64, 16, seed=3, scale=1e-3)
    exact = rank_k_inverse(grads, 8, 1e-7, buffer=4).diagonal()
    for dtype in (torch.float16, torch.bfloat16):
        got = rank_k_inverse([g.float() for g in grads], 8, 1e-7, buffer=4, dtype=dtype).diagonal()
        assert bool(torch.isfinite(got).all())
        torch.testing.assert_close(got.double(), exact, rtol=0.1, atol=0)


def test_buffer_size_follows_the_memory_budget():
    assert buffer_grads(1e9, 10_700_000, 1024) == 23  # MiniLM's prunable weights, float32
    assert buffer_grads(1e9, 355_000_000, 1024) == 1  # RoBERTa-large: at least one
    assert buffer_grads(1e9, 1000, 64) == 64  # never more than the gradients there are


def test_an_indefinite_block_gets_its_eigenvalues_raised_to_the_floor():
    f = torch.tensor([[[1.0, 0.0], [0.0, -1e-9]], [[2.0, 0.0], [0.0, 4.0]]], dtype=torch.float64)
    inv = spd_inverse(f, 1e-3)
    torch.testing.assert_close(inv, torch.diag_embed(torch.tensor([[1.0, 1e3], [0.5, 0.25]], dtype=torch.float64)))


def _dense_obs(finv: torch.Tensor, pruned: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(w)
    for i in range(w.shape[0]):
        q = pruned[i].nonzero().squeeze(1)
        if q.numel():
            out[i] = -finv[i][:, q] @ torch.linalg.solve(finv[i][q][:, q], w[i][q])
    return out


def test_batched_obs_update_equals_a_dense_solve_per_block():
    gen = torch.Generator().manual_seed(4)
    finv = rank_k_inverse(_grads(6 * 5, 9, seed=5), 5, 0.1, buffer=3).finv
    w = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    pruned = torch.tensor([[1, 0, 0, 0, 0], [0, 0, 1, 0, 0], [1, 1, 0, 1, 0], [1, 1, 1, 1, 1], [0, 1, 0, 1, 1],
                           [0, 0, 0, 0, 1]], dtype=torch.bool)  # single pruned weights take the closed form
    got = obs_blocks(finv, pruned, w)
    torch.testing.assert_close(got, _dense_obs(finv, pruned, w), rtol=1e-10, atol=1e-12)
    assert float((w + got)[pruned].abs().max()) < 1e-12  # the pruned set is removed exactly


def _obert_args(**kw) -> SimpleNamespace:
    base = dict(obert_block_size=4, obert_dampening=0.05, obert_num_grads=5, obert_update=True, obert_dtype="float64",
                obert_buffer_gb=1.0, obert_layerwise=False, fp16=False, seed=0)
    return SimpleNamespace(**{**base, **kw})


def _model_targets(seed: int) -> list[PruneTarget]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [("a", (3, 4), "layer_00"), ("b", (2, 5), "layer_00"), ("c", (4, 4), "layer_01"), ("d", (3, 3), "head")]
    return [PruneTarget(name, torch.nn.Parameter(torch.randn(*s, generator=gen, dtype=torch.float64)), group)
            for name, s, group in shapes]


def _run(args: SimpleNamespace) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    """Scores and updated weights of one oBERT event on a fixed model, and the gradient passes it ran."""
    targets = _model_targets(0)
    gen = torch.Generator().manual_seed(1)
    grads = [{t.name: torch.randn(t.param.shape, generator=gen, dtype=torch.float64) for t in targets}
             for _ in range(5)]
    calls = []

    def batches(n):  # repeatable, as the trainer's gradient_batches (same data order and RNG each call)
        calls.append(n)
        for g in grads[:n]:
            for t in targets:
                t.param.grad = g[t.name].clone()
            yield

    view = ScoringView(targets, {}, 1, batches, count_batches_per_pass=lambda: len(grads))
    crit = get_criterion_class("obert").from_args(args)
    lazy = crit.scores(view)
    scores = {t.name: lazy[t.name].values(0, t.numel) for t in targets}
    keep = {t.name: torch.rand(t.param.shape, generator=gen) > 0.5 for t in targets}
    calls.clear()
    crit.after_selection(view, keep)
    return scores, {t.name: t.param.detach().clone() for t in targets}, len(calls)


def test_layerwise_gives_the_same_scores_and_update_one_layer_at_a_time():
    scores, weights, passes = _run(_obert_args(obert_buffer_gb=1e-7))  # 100 bytes: one gradient at a time
    scores_lw, weights_lw, passes_lw = _run(_obert_args(obert_layerwise=True))
    assert passes == 0 and passes_lw == 3  # the update rebuilds each of the 3 layers' inverses
    for name in scores:
        torch.testing.assert_close(scores_lw[name], scores[name], rtol=1e-12, atol=0)
        torch.testing.assert_close(weights_lw[name], weights[name], rtol=1e-12, atol=1e-12)
