"""`GTSConfig`: the configuration of a GTS model, its output vocabulary included.

A GTS checkpoint is self-contained: the pretrained encoder's config is a sub-config (`encoder`), and
the operators, constants and number slots the decoder can emit are config fields, so
`from_pretrained` rebuilds exactly the model that was saved, with the ids its predictions mean.
"""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from smc_trainer.tasks.arithmetic.vocab import EquationVocab


class GTSConfig(PreTrainedConfig):
    """GTS (Xie & Sun 2019) over a pretrained encoder: SMC-Bench's sizes are the defaults (hidden 512,
    2 BiLSTM layers, dropout 0.5, beam 5).

    Fields: `encoder` (the pretrained encoder's config), `hidden_size` (BiLSTM and tree decoder),
    `num_layers` (BiLSTM layers over the encoder states), `dropout` (between the BiLSTM layers and on the tree
    decoder's inputs), `encoder_dropout` (on the encoder states before the BiLSTM; 0 as the official
    `train_tree`, which feeds the RoBERTa output straight into `EncoderSeq`), `embedding_size` (operator
    embeddings; None: the encoder's hidden size, as the SVAMP code), `operators`, `constants` and
    `max_numbers` (the output vocabulary), `beam_size` and `max_decode_length` (evaluation decoding).
    """

    model_type = "gts"
    sub_configs_defaults = {"encoder": SubConfigSpec(config_class=AutoConfig, model_type="roberta")}

    encoder: PreTrainedConfig | dict | None = None
    hidden_size: int = 512
    num_layers: int = 2
    dropout: float = 0.5
    encoder_dropout: float = 0.0
    embedding_size: int | None = None
    operators: list[str] | None = None
    constants: list[str] | None = None
    max_numbers: int = 1
    beam_size: int = 5
    max_decode_length: int = 40

    @property
    def vocab(self) -> EquationVocab:
        """The output vocabulary these fields describe."""
        return EquationVocab(tuple(self.operators or ()), tuple(self.constants or ()), self.max_numbers)

    @property
    def operator_embedding_size(self) -> int:
        return self.embedding_size if self.embedding_size is not None else self.encoder.hidden_size
