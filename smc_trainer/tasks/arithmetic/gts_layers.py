"""The networks of the GTS tree decoder (Xie & Sun 2019, "A Goal-Driven Tree-Structured Neural Model for
Math Word Problems"), written from the paper; names follow it so pruning reports read naturally.

Each tree node carries a goal vector q. The prediction network turns q (and, for a right child, the
embedding of its finished left sibling subtree) into the node's goal, attends over the encoder
states for a context c, and scores every output token: operators by a linear layer, leaves
(constants and the problem's numbers) by comparing [q; c] with each leaf's embedding. The
generation network splits an operator node into the goals of its two children; the merge network
folds a finished subtree (operator embedding, left and right subtree embeddings) into one vector.
All gates are tanh(W x) * sigmoid(W_g x), and dropout is applied to every input, as in GTS.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def gated(value: nn.Linear, gate: nn.Linear, x: Tensor) -> Tensor:
    """GTS's gated unit: tanh(value(x)) * sigmoid(gate(x))."""
    return torch.tanh(value(x)) * torch.sigmoid(gate(x))


class TreeAttention(nn.Module):
    """Attention of a goal over the encoder states: softmax_s(w^T tanh(W [q; h_s])), padding masked."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.attn = nn.Linear(2 * hidden_size, hidden_size)
        self.score = nn.Linear(hidden_size, 1, bias=False)

    def forward(self, goal: Tensor, states: Tensor, padding: Tensor) -> Tensor:
        """Attention weights (R x S) of goals (R x H) over states (R x S x H); `padding` (R x S) is True at pads."""
        query = goal.unsqueeze(1).expand(-1, states.size(1), -1)
        energy = self.score(torch.tanh(self.attn(torch.cat([query, states], dim=-1)))).squeeze(-1)
        energy = energy.masked_fill(padding, torch.finfo(energy.dtype).min)
        return torch.softmax(energy, dim=-1)


class LeafScore(nn.Module):
    """Score of each candidate leaf embedding e for the node's [q; c]: w^T tanh(W [q; c; e])."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.attn = nn.Linear(3 * hidden_size, hidden_size)
        self.score = nn.Linear(hidden_size, 1, bias=False)

    def forward(self, node: Tensor, leaves: Tensor) -> Tensor:
        """Scores (R x L) of leaves (R x L x H) for nodes (R x 2H)."""
        query = node.unsqueeze(1).expand(-1, leaves.size(1), -1)
        return self.score(torch.tanh(self.attn(torch.cat([query, leaves], dim=-1)))).squeeze(-1)


class Prediction(nn.Module):
    """Goal of the current node, its context, and the scores of every output token (operators, then leaves)."""

    def __init__(self, hidden_size: int, num_operators: int, num_constants: int, dropout: float):
        super().__init__()
        self.concat_l = nn.Linear(hidden_size, hidden_size)
        self.concat_lg = nn.Linear(hidden_size, hidden_size)
        self.concat_r = nn.Linear(2 * hidden_size, hidden_size)
        self.concat_rg = nn.Linear(2 * hidden_size, hidden_size)
        self.attention = TreeAttention(hidden_size)
        self.ops = nn.Linear(2 * hidden_size, num_operators)
        self.leaf_score = LeafScore(hidden_size)
        # learned embeddings of the constants (1.0, 100.0, ...); the numbers' come from the encoder
        self.constant_embeddings = nn.Embedding(num_constants, hidden_size) if num_constants else None
        self.dropout = nn.Dropout(dropout)

    def goal(self, parent_goal: Tensor, left_sibling: Tensor | None) -> Tensor:
        """q of a left child (from its parent's goal) or of a right child (with its left sibling's subtree)."""
        if left_sibling is None:
            return gated(self.concat_l, self.concat_lg, self.dropout(parent_goal))
        x = torch.cat([self.dropout(left_sibling), self.dropout(parent_goal)], dim=-1)
        return gated(self.concat_r, self.concat_rg, x)

    def leaves(self, numbers: Tensor) -> Tensor:
        """Leaf embeddings per row (R x (C + M) x H): the constants, then the problem's numbers (R x M x H)."""
        if self.constant_embeddings is None:
            return numbers
        constants = self.constant_embeddings.weight.unsqueeze(0).expand(numbers.size(0), -1, -1)
        return torch.cat([constants, numbers.to(constants.dtype)], dim=1)

    def forward(
        self, goal: Tensor, states: Tensor, padding: Tensor, leaves: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(token scores R x V, context R x H) for goals `goal` (R x H) of nodes to expand."""
        attention = self.attention(self.dropout(goal), states, padding)
        context = torch.bmm(attention.unsqueeze(1), states).squeeze(1)
        node = self.dropout(torch.cat([goal, context], dim=-1))
        scores = torch.cat([self.ops(node), self.leaf_score(node, self.dropout(leaves))], dim=-1)
        return scores, context


class Generation(nn.Module):
    """Goals of the left and right children of an operator node: gated([q; c; e(op)])."""

    def __init__(self, hidden_size: int, num_operators: int, embedding_size: int, dropout: float):
        super().__init__()
        self.operator_embeddings = nn.Embedding(num_operators, embedding_size)
        self.generate_l = nn.Linear(2 * hidden_size + embedding_size, hidden_size)
        self.generate_lg = nn.Linear(2 * hidden_size + embedding_size, hidden_size)
        self.generate_r = nn.Linear(2 * hidden_size + embedding_size, hidden_size)
        self.generate_rg = nn.Linear(2 * hidden_size + embedding_size, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, goal: Tensor, context: Tensor, operators: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(left goal, right goal, operator embedding) for goals R x H, contexts R x H and operator ids R."""
        embedding = self.operator_embeddings(operators)
        x = torch.cat([self.dropout(goal), self.dropout(context), self.dropout(embedding)], dim=-1)
        left = gated(self.generate_l, self.generate_lg, x)
        right = gated(self.generate_r, self.generate_rg, x)
        return left, right, embedding


class Merge(nn.Module):
    """Embedding of a finished subtree from its operator embedding and its two children's embeddings."""

    def __init__(self, hidden_size: int, embedding_size: int, dropout: float):
        super().__init__()
        self.merge = nn.Linear(2 * hidden_size + embedding_size, hidden_size)
        self.merge_g = nn.Linear(2 * hidden_size + embedding_size, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, operator: Tensor, left: Tensor, right: Tensor) -> Tensor:
        x = torch.cat([self.dropout(operator), self.dropout(left), self.dropout(right)], dim=-1)
        return gated(self.merge, self.merge_g, x)
