"""Graph2Tree's graph module (Zhang et al. 2020, "Graph-to-Tree Learning for Solving Math Word Problems"): graph
convolutions over the BiLSTM states, written from the paper and the official code's structure.

Four two-layer GCNs of hidden/4 outputs each, two over the quantity comparison graph and two over the quantity
cell graph (the official `Graph_Module` feeds its graphs 1, 1, 4, 4), are concatenated, layer-normalized and
added to the input; a position-wise feed-forward layer with its own residual follows. Each convolution is
`A (x W^T) + b` on the raw 0/1 adjacency. The convolution weights are `nn.Linear` weights, so they are
prunable like every other 2-D weight of the model (the official masks every 2-D parameter).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from smc_trainer.tasks.arithmetic.graphs import CELL, COMPARISON

GRAPH_OF_CONVOLUTION = (COMPARISON, COMPARISON, CELL, CELL)


class GraphConvolution(nn.Linear):
    """One graph convolution `adj @ (x W^T) + b` (Kipf & Welling), initialized as the official code:
    weight and bias uniform in +-1/sqrt(out_features)."""

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.out_features)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor, adj: Tensor) -> Tensor:  # type: ignore[override]
        out = adj @ nn.functional.linear(x, self.weight)
        return out if self.bias is None else out + self.bias


class GCN(nn.Module):
    """Two graph convolutions with a ReLU and dropout between them."""

    def __init__(self, in_size: int, hidden_size: int, out_size: int, dropout: float):
        super().__init__()
        self.gc1 = GraphConvolution(in_size, hidden_size)
        self.gc2 = GraphConvolution(hidden_size, out_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, adj: Tensor) -> Tensor:
        return self.gc2(self.dropout(torch.relu(self.gc1(x, adj))), adj)


class GraphModule(nn.Module):
    """States B x S x H -> graph-enhanced states B x S x H over the adjacency B x 2 x S x S (`graphs.adjacency`)."""

    def __init__(self, hidden_size: int, dropout: float):
        super().__init__()
        if hidden_size % len(GRAPH_OF_CONVOLUTION):
            raise ValueError(f"hidden_size must be a multiple of {len(GRAPH_OF_CONVOLUTION)}; got {hidden_size}")
        part = hidden_size // len(GRAPH_OF_CONVOLUTION)
        self.convolutions = nn.ModuleList(GCN(hidden_size, hidden_size, part, dropout) for _ in GRAPH_OF_CONVOLUTION)
        self.norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.feed_forward_in = nn.Linear(hidden_size, hidden_size)
        self.feed_forward_out = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, states: Tensor, adjacency: Tensor) -> Tensor:
        adjacency = adjacency.to(states.dtype)
        parts = [gcn(states, adjacency[:, g]) for gcn, g in zip(self.convolutions, GRAPH_OF_CONVOLUTION, strict=True)]
        mixed = self.norm(torch.cat(parts, dim=-1)) + states
        return self.feed_forward_out(self.dropout(torch.relu(self.feed_forward_in(mixed)))) + mixed
