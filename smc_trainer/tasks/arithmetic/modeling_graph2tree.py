"""`Graph2TreeForMathWordProblems`: GTS's encoder and tree decoder with Graph2Tree's graph module between them.

The second arithmetic model of SMC-Bench (Fig. 2's Graph2Tree panels; the SVAMP authors' Graph2Tree with a
RoBERTa embedding): the pretrained encoder and the BiLSTM read the question as in GTS, the graph module
(`graph_layers`) convolves the BiLSTM states over the quantity cell and quantity comparison graphs (`graphs`),
and the tree decoder attends over the graph-enhanced states and reads each number's embedding from them. The
root goal stays the BiLSTM's (as the official `EncoderSeq`, which takes it before the graph module).

The graphs arrive as `graph_edges` (B x E x 3 (graph, row, column) token edges padded with -1, built by the
data encoding from `group_nums` and the numbers' values); the dense adjacency is made on the model's device.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from smc_trainer.errors import UsageError
from smc_trainer.tasks.arithmetic.configuration_graph2tree import Graph2TreeConfig
from smc_trainer.tasks.arithmetic.graph_layers import GraphConvolution, GraphModule
from smc_trainer.tasks.arithmetic.graphs import adjacency
from smc_trainer.tasks.arithmetic.modeling_gts import GTSForMathWordProblems, GTSOutput
from smc_trainer.tasks.arithmetic.tree_decoding import EncodedProblems


class Graph2TreeForMathWordProblems(GTSForMathWordProblems):
    """Graph2Tree over a pretrained encoder; see the module docstring."""

    config_class = Graph2TreeConfig
    keep_dense_weights: ClassVar[str] = GTSForMathWordProblems.keep_dense_weights
    """The official Graph2Tree prunable set is GTS's (one `sparse_core.Masking` for both): every 2-D weight, the
    graph convolutions and the graph feed-forward layer included, except the pooler, the merge network and the
    constant embeddings."""

    def __init__(self, config: Graph2TreeConfig, encoder=None):
        super().__init__(config, encoder)
        self.graph = GraphModule(config.hidden_size, config.graph_dropout)
        self.post_init()

    @classmethod
    def from_encoder(cls, encoder, **config_kwargs) -> Graph2TreeForMathWordProblems:
        """A new Graph2Tree (random graph module and decoder) on top of an already loaded pretrained `encoder`."""
        return cls(Graph2TreeConfig(encoder=encoder.config.to_dict(), **config_kwargs), encoder=encoder)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (GraphConvolution, nn.LayerNorm)):
            module.reset_parameters()
        else:
            super()._init_weights(module)

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None, token_type_ids: Tensor | None,
               number_positions: Tensor, graph_edges: Tensor | None = None) -> EncodedProblems:
        """GTS's encoding with the BiLSTM states passed through the graph module."""
        if graph_edges is None:
            raise UsageError("Graph2Tree needs graph_edges (the quantity graphs' token edges, built from the "
                             "group_nums column by the arithmetic task's encoding)")
        attention_mask = self._checked_mask(input_ids, attention_mask)
        states, problem = self.contextual_states(input_ids, attention_mask, token_type_ids)
        states = self.graph(states, adjacency(graph_edges, attention_mask, states.dtype))
        return self.problems(states, problem, attention_mask, number_positions)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        number_positions: Tensor | None = None,
        graph_edges: Tensor | None = None,
        labels: Tensor | None = None,
        label_numbers: Tensor | None = None,
        label_answers: Tensor | None = None,
        decode: bool | None = None,
    ) -> GTSOutput:
        """As `GTSForMathWordProblems.forward`, with the problems' `graph_edges`."""
        if number_positions is None:
            raise UsageError("Graph2Tree needs number_positions (the token index of each numberK placeholder)")
        problems = self.encode(input_ids, attention_mask, token_type_ids, number_positions, graph_edges)
        return self.decode_or_score(problems, labels, decode)

    @torch.no_grad()
    def decode_equations(self, input_ids: Tensor, number_positions: Tensor, attention_mask: Tensor | None = None,
                         token_type_ids: Tensor | None = None, beam_size: int | None = None,
                         max_length: int | None = None, graph_edges: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(prefix-token ids B x L padded with -100, summed log-probabilities B) of the best beam per problem."""
        problems = self.encode(input_ids, attention_mask, token_type_ids, number_positions, graph_edges)
        return self._beam_search(problems, beam_size, max_length)
