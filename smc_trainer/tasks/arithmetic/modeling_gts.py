"""`GTSForMathWordProblems`: GTS's tree decoder over any pretrained Hugging Face encoder, as a `PreTrainedModel`.

The model of SMC-Bench's arithmetic task (the SVAMP authors' GTS with a RoBERTa embedding): the
pretrained encoder (`self.encoder`, the base model) reads the question, a 2-layer BiLSTM runs over
its states (directions summed; as the official code, no dropout on the states unless
`config.encoder_dropout`), the root goal is the BiLSTM's last forward plus first backward
state, and each number's embedding is the state at the first sub-token of its `numberK`
placeholder. The tree decoder (`gts_layers`, `tree_decoding`) is trained by teacher forcing and
decodes by beam search.

In training mode `forward` returns the teacher-forced loss. In eval mode it also returns
`predictions`: the beam-search equations as prefix-token ids, padded with -100. That is how the
Trainer's evaluation loop (`trainer.evaluate`) gets decoded equations without `--predict_with_generate`:
the metric needs each problem's numbers, which the Trainer hands over as the labels
`label_numbers` / `label_answers` (forward arguments whose names contain "label" are the Trainer's
default `label_names`); `Seq2SeqTrainer`'s generate path would pass `labels` alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import AutoModel, PreTrainedModel
from transformers.utils import ModelOutput

from smc_trainer.errors import UsageError
from smc_trainer.tasks.arithmetic.configuration_gts import GTSConfig
from smc_trainer.tasks.arithmetic.gts_layers import Generation, Merge, Prediction
from smc_trainer.tasks.arithmetic.tree_decoding import EncodedProblems, TreeDecoder, gold_log_probs

IGNORE_INDEX = -100


@dataclass
class GTSOutput(ModelOutput):
    """`loss`: mean teacher-forced negative log-likelihood per gold token (when labels are given);
    `logits`: the decoder's token scores at each gold step under teacher forcing, B x T x V (with labels, when
    not decoding), and `logits_mask` the steps scored (B x T), what distillation compares;
    `predictions`: beam-search prefix-token ids, -100 after the end (eval mode only)."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    logits_mask: torch.BoolTensor | None = None
    predictions: torch.LongTensor | None = None


class GTSForMathWordProblems(PreTrainedModel):
    """GTS over a pretrained encoder; see the module docstring. `encoder` may be passed already loaded
    (`from_encoder`), else it is built from `config.encoder` (random weights until `from_pretrained` loads them)."""

    config_class = GTSConfig
    base_model_prefix = "encoder"
    main_input_name = "input_ids"
    keep_dense_weights: ClassVar[str] = r"^(?:encoder\.pooler|merge|prediction\.constant_embeddings)\."
    """Never pruned (`smc_trainer.engine.targets`), as the official SMC-Bench GTS: its SNIP, GMP and RigL runs
    leave the pooler (which GTS never reads) and the merge network out of the masks, and its constant embeddings
    are a 3-D parameter, never masked. (Its one-shot and LTH runs masked the pooler and merge: one set for every
    method here; docs/differences.md.)"""

    distillation_teacher_kwargs: ClassVar[dict[str, bool]] = {"decode": False}
    """What a distillation teacher (eval mode) passes to `forward` to get the teacher-forced `logits` instead of a
    beam search (`smc_trainer.training.distillation`)."""

    def __init__(self, config: GTSConfig, encoder: PreTrainedModel | None = None):
        super().__init__(config)
        self.encoder = encoder if encoder is not None else AutoModel.from_config(config.encoder)
        vocab, hidden = config.vocab, config.hidden_size
        self.encoder_dropout = nn.Dropout(config.encoder_dropout)
        self.lstm = nn.LSTM(config.encoder.hidden_size, hidden, num_layers=config.num_layers, batch_first=True,
                            bidirectional=True, dropout=config.dropout if config.num_layers > 1 else 0.0)
        self.prediction = Prediction(hidden, len(vocab.operators), len(vocab.constants), config.dropout)
        self.generation = Generation(hidden, len(vocab.operators), config.operator_embedding_size, config.dropout)
        self.merge = Merge(hidden, config.operator_embedding_size, config.dropout)
        self.post_init()

    @classmethod
    def from_encoder(cls, encoder: PreTrainedModel, **config_kwargs) -> GTSForMathWordProblems:
        """A new GTS (random decoder) on top of an already loaded pretrained `encoder`."""
        return cls(GTSConfig(encoder=encoder.config.to_dict(), **config_kwargs), encoder=encoder)

    def _init_weights(self, module: nn.Module) -> None:
        """PyTorch's default initialization for the BiLSTM and decoder, as the GTS code; the pretrained
        encoder is initialized (or loaded) by its own class."""
        if isinstance(module, (nn.Linear, nn.Embedding, nn.LSTM)):
            module.reset_parameters()

    @property
    def tree_decoder(self) -> TreeDecoder:
        return TreeDecoder(self.prediction, self.generation, self.merge, len(self.config.vocab.operators))

    # ---- encoding -------------------------------------------------------------------------------

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None, token_type_ids: Tensor | None,
               number_positions: Tensor) -> EncodedProblems:
        """Encoder + BiLSTM states, root goals, leaf embeddings and the tokens each problem allows."""
        attention_mask = self._checked_mask(input_ids, attention_mask)
        states, problem = self.contextual_states(input_ids, attention_mask, token_type_ids)
        return self.problems(states, problem, attention_mask, number_positions)

    @staticmethod
    def _checked_mask(input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if not bool(attention_mask[:, 0].all()):
            raise UsageError("GTS expects right-padded inputs (attention_mask[:, 0] must be 1)")
        return attention_mask

    def contextual_states(self, input_ids: Tensor, attention_mask: Tensor,
                          token_type_ids: Tensor | None) -> tuple[Tensor, Tensor]:
        """(BiLSTM states over the encoder's, directions summed, B x S x H; the root goal, B x H: the last forward
        plus the first backward state)."""
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        lengths = attention_mask.sum(dim=1)
        packed = pack_padded_sequence(self.encoder_dropout(hidden), lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        outputs, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=hidden.size(1))
        size = self.config.hidden_size
        batch = torch.arange(input_ids.size(0), device=input_ids.device)
        problem = outputs[batch, lengths - 1, :size] + outputs[:, 0, size:]
        return outputs[..., :size] + outputs[..., size:], problem

    def problems(self, states: Tensor, problem: Tensor, attention_mask: Tensor,
                 number_positions: Tensor) -> EncodedProblems:
        """What the tree decoder reads: each number's embedding is the state at its placeholder's first sub-token."""
        size = self.config.hidden_size
        positions = self._number_slots(number_positions)
        present = positions >= 0
        numbers = states.gather(1, positions.clamp(min=0).unsqueeze(-1).expand(-1, -1, size))
        numbers = numbers * present.unsqueeze(-1).to(numbers.dtype)
        fixed = torch.ones(states.size(0), self.config.vocab.number_start, dtype=torch.bool, device=states.device)
        return EncodedProblems(states=states, padding=attention_mask == 0, problem=problem,
                               leaves=self.prediction.leaves(numbers), allowed=torch.cat([fixed, present], dim=1))

    def _number_slots(self, number_positions: Tensor) -> Tensor:
        """Number positions padded with -1 to the vocabulary's `max_numbers` slots."""
        slots = self.config.max_numbers
        if number_positions.size(1) > slots:
            raise UsageError(f"a problem has {number_positions.size(1)} number slots but this model has "
                             f"{slots} (config.max_numbers)")
        return nn.functional.pad(number_positions, (0, slots - number_positions.size(1)), value=-1)

    # ---- training and decoding --------------------------------------------------------------------

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        number_positions: Tensor | None = None,
        labels: Tensor | None = None,
        label_numbers: Tensor | None = None,
        label_answers: Tensor | None = None,
        decode: bool | None = None,
    ) -> GTSOutput:
        """`labels`: gold prefix-token ids (-100 padding); `number_positions`: the token index of each numberK
        placeholder (-1: absent). `label_numbers` and `label_answers` are not used by the model: they ride along
        so that the Trainer passes them to `compute_metrics`. `decode`: beam-search `predictions` (None: in eval
        mode); when not decoding, labels also give the per-step `logits` (a distillation teacher's)."""
        if number_positions is None:
            raise UsageError("GTS needs number_positions (the token index of each numberK placeholder)")
        return self.decode_or_score(self.encode(input_ids, attention_mask, token_type_ids, number_positions), labels,
                                    decode)

    def decode_or_score(self, problems: EncodedProblems, labels: Tensor | None, decode: bool | None) -> GTSOutput:
        """The teacher-forced loss (and scores) of `labels` and, when decoding, the beam-search predictions."""
        decode = not self.training if decode is None else decode
        loss = scores = scored = None
        if labels is not None:
            scores, scored = self.tree_decoder.teacher_forced_scores(problems, labels)
            loss = -gold_log_probs(scores, labels, scored).sum() / scored.sum().clamp(min=1)
        elif self.training:
            raise UsageError("GTS trains on labels (the gold prefix equations as token ids)")
        if decode:
            return GTSOutput(loss=loss, predictions=self._beam_search(problems)[0])
        return GTSOutput(loss=loss, logits=scores, logits_mask=scored)

    @torch.no_grad()
    def decode_equations(self, input_ids: Tensor, number_positions: Tensor, attention_mask: Tensor | None = None,
                         token_type_ids: Tensor | None = None, beam_size: int | None = None,
                         max_length: int | None = None) -> tuple[Tensor, Tensor]:
        """(prefix-token ids B x L padded with -100, summed log-probabilities B) of the best beam per problem."""
        problems = self.encode(input_ids, attention_mask, token_type_ids, number_positions)
        return self._beam_search(problems, beam_size, max_length)

    def _beam_search(self, problems: EncodedProblems, beam_size: int | None = None,
                     max_length: int | None = None) -> tuple[Tensor, Tensor]:
        best = self.tree_decoder.beam_search(problems, beam_size or self.config.beam_size,
                                             max_length or self.config.max_decode_length)
        device = problems.states.device
        ids = torch.full((len(best), max(1, *(len(h.tokens) for h in best))), IGNORE_INDEX, dtype=torch.long,
                         device=device)
        for row, hypothesis in enumerate(best):
            ids[row, : len(hypothesis.tokens)] = torch.tensor(hypothesis.tokens, dtype=torch.long, device=device)
        return ids, torch.tensor([h.score for h in best], device=device)
