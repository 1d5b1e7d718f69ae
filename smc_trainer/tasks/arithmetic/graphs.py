"""Graph2Tree's two quantity graphs (Zhang et al. 2020), built from a problem's words, numbers and `group_nums`.

The nodes are the question's tokens. Both graphs have a self-loop on every real token (none on padding) and
no normalization, as the official Graph2Tree / SMC-Bench code feeds its 0/1 matrices straight to the
convolutions. `A[i, j] = 1` means token i aggregates token j.

- Quantity cell graph: each number placeholder is linked both ways to the words of its quantity cell (the
  `group_nums` word indices) that lie fewer than 4 words away and are not numbers; the cell words that are the
  same word are linked to each other, every placeholder counting as the one word NUM (the official code
  compares the tokens of its `NUM`-substituted text). This is the official `get_attribute_between_graph`,
  the cell graph the official `Graph_Module` uses.
- Quantity comparison graph: number a's node aggregates number b's when value_a >= value_b (a != b), so
  equal values are linked both ways (the official `get_greater_num_graph`).

The official code measures the 4-word window between a word index (the number's) and a token index (the cell
word's, after its RoBERTa re-indexing); here both are word indices of the whitespace-split question, each
mapped to its first sub-token, as GTS's number embeddings are read (docs/differences.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from smc_trainer.errors import UsageError

CELL, COMPARISON = 0, 1  # graph index of an edge (graph, row, column)
NUM_GRAPHS = 2
CELL_WINDOW = 4  # a cell word is linked to a number fewer than this many words away
_WORD = re.compile(r"\S+")
_NUMBER_WORD = re.compile(r"number\d+")


def parse_group(text: str, split: str) -> list[int]:
    """The word indices of a `group_nums` cell ("[8, 9, 10]"); a UsageError naming the value if it is no list."""
    try:
        group = json.loads(text) if text.strip() else []
    except json.JSONDecodeError:
        group = None
    if not isinstance(group, list) or not all(isinstance(i, int) for i in group):
        raise UsageError(f"{split} split: group_nums must be a list of word indices such as [8, 9, 10]; got {text!r}")
    return group


def word_starts(question: str) -> list[int]:
    """Character offset of each whitespace-separated word of `question`."""
    return [m.start() for m in _WORD.finditer(question)]


def cell_word_edges(words: Sequence[str], group: Sequence[int]) -> set[tuple[int, int]]:
    """The quantity cell graph between word indices (both directions, no self-loops)."""
    numbers = {i for i, w in enumerate(words) if _NUMBER_WORD.fullmatch(w)}
    cell = [g for g in dict.fromkeys(group) if 0 <= g < len(words)]
    edges = set()
    for n in numbers:
        for g in cell:
            if g not in numbers and abs(n - g) < CELL_WINDOW:
                edges |= {(n, g), (g, n)}
    edges |= {(a, b) for a in cell for b in cell if a != b and _same_word(words, numbers, a, b)}
    return edges


def _same_word(words: Sequence[str], numbers: set[int], a: int, b: int) -> bool:
    """Words a and b are the same word; every number placeholder is the word NUM."""
    return (a in numbers and b in numbers) or words[a] == words[b]


def comparison_edges(values: Sequence[float], positions: Sequence[int]) -> set[tuple[int, int]]:
    """The quantity comparison graph between the numbers' token positions (-1: absent): a -> b when
    values[a] >= values[b]."""
    return {(positions[a], positions[b]) for a in range(len(values)) for b in range(len(values))
            if a != b and min(positions[a], positions[b]) >= 0 and positions[a] != positions[b]
            and values[a] >= values[b]}


def quantity_graph_edges(question: str, values: Sequence[float], group: Sequence[int], positions: Sequence[int],
                         token_of_char: Callable[[int], int | None]) -> list[list[int]]:
    """Sorted (graph, row, column) token edges of one problem: `positions` are the numbers' token positions (as
    GTS reads them), `token_of_char` maps a character offset to its token (None: cut by truncation)."""
    starts = word_starts(question)
    words = [question[s:].split(maxsplit=1)[0] for s in starts]
    token = [token_of_char(s) for s in starts]
    edges = {(CELL, token[a], token[b]) for a, b in cell_word_edges(words, group)
             if token[a] is not None and token[b] is not None and token[a] != token[b]}
    edges |= {(COMPARISON, a, b) for a, b in comparison_edges(values, positions)}
    return [list(e) for e in sorted(edges)]


def adjacency(edges: Tensor, attention_mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Dense 0/1 adjacency B x 2 x S x S from padded edges B x E x 3 (rows of -1 are padding) and the
    attention mask B x S (self-loops on its real tokens)."""
    batch, length = attention_mask.shape
    out = torch.zeros(batch, NUM_GRAPHS, length, length, dtype=dtype, device=attention_mask.device)
    loops = torch.diag_embed(attention_mask.to(dtype))
    out += loops.unsqueeze(1)
    real = edges[..., 0] >= 0
    rows = torch.arange(batch, device=edges.device).unsqueeze(1).expand_as(real)[real]
    graph, i, j = edges[real].unbind(-1)
    out[rows, graph, i, j] = 1
    return out
