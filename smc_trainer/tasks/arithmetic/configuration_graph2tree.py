"""`Graph2TreeConfig`: a GTS configuration plus the graph module's dropout; its own `model_type`, so a saved
Graph2Tree loads back as Graph2Tree through `AutoModel`."""

from __future__ import annotations

from smc_trainer.tasks.arithmetic.configuration_gts import GTSConfig


class Graph2TreeConfig(GTSConfig):
    """Graph2Tree (Zhang et al. 2020) over a pretrained encoder: every GTS field (SMC-Bench's Graph2Tree uses
    hidden 384, 2 BiLSTM layers, dropout 0.5, beam 5) and `graph_dropout`, the dropout inside the graph
    convolutions and the graph module's feed-forward layer (0.3, the official `Graph_Module` default)."""

    model_type = "graph2tree"

    graph_dropout: float = 0.3
