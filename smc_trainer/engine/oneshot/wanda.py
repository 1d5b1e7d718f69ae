"""Wanda: score |W_ij| * ||X_j||_2 (weight magnitude times the norm of its input feature over the calibration
tokens), compared within each output row as the paper does (`row_keep_masks`) or across a layer / all layers
through the usual selection (`smc_trainer.engine.selection`)."""

from __future__ import annotations

import torch
from torch import Tensor

from smc_trainer.errors import UsageError


def wanda_scores(weight: Tensor, input_norm: Tensor) -> Tensor:
    """|W| * ||X_j|| for a weight in linear layout [out, in] and the per-input-feature norms [in] (float32)."""
    if weight.dim() != 2 or input_norm.shape != (weight.shape[1],):
        raise UsageError(f"wanda needs a [out, in] weight and [in] input norms; got {tuple(weight.shape)} and "
                         f"{tuple(input_norm.shape)}")
    return weight.detach().float().abs() * input_norm.to(weight.device, torch.float32).unsqueeze(0)


def row_counts(rows: int, cols: int, keep: int) -> Tensor:
    """How many weights each of `rows` rows keeps so the total is exactly `keep`: floor(keep / rows) each, and one
    more for the first `keep % rows` rows (deterministic)."""
    if not 0 <= keep <= rows * cols:
        raise UsageError(f"cannot keep {keep} weights in a {rows}x{cols} layer")
    counts = torch.full((rows,), keep // rows, dtype=torch.long)
    counts[: keep % rows] += 1
    return counts


def row_keep_masks(scores: Tensor, keep: int) -> Tensor:
    """Bool [out, in] mask keeping exactly `keep` weights, the highest scores of each row (`row_counts` per row);
    among equal scores the lower column index is kept."""
    rows, cols = scores.shape
    counts = row_counts(rows, cols, keep).to(scores.device)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    rank_kept = torch.arange(cols, device=scores.device).unsqueeze(0) < counts.unsqueeze(1)
    mask = torch.zeros_like(rank_kept)
    mask.scatter_(1, order, rank_kept)
    return mask
