"""`EsmForThermostability` (an HF ESM backbone) and `BertForThermostability` (an HF BERT backbone, e.g. TAPE's
converted ProteinBert) plus the SMC-Bench / HotProtein classification head.

The head (paper section 4.3; `finetune_sup.py` of the original code) reads the final-layer token
representations (after ESM's final LayerNorm), averages them over the residues of each sequence
and maps the mean through Linear(hidden, 512) -> LayerNorm -> ReLU -> Linear(512, C).

Which positions are averaged: those with `attention_mask == 1` whose token is not one of
`pool_exclude_token_ids` (by default ESM's `<cls>`, `<pad>`, `<eos>` and `<mask>`, ids 0, 1, 2, 32;
the loader copies them from the tokenizer). `<unk>` is kept: it stands for a residue with an
unknown letter. The original averaged over `tokens >= 2`, which also counted `<eos>`; we do not.

It is a `PreTrainedModel`, so `save_pretrained` / `from_pretrained` / `push_to_hub` work, and any HF
ESM checkpoint (ESM-1b, ESM-2 sizes) loads into its `esm` backbone; the head starts fresh. The BERT
variant is the same head on `BertModel` (`bert` backbone, no pooler); its pooled-out ids default to
TAPE's `<pad>`, `<mask>`, `<cls>`, `<sep>` (0-3).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    BertConfig,
    BertModel,
    EsmConfig,
    EsmModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.bert.modeling_bert import BertPreTrainedModel
from transformers.models.esm.modeling_esm import EsmPreTrainedModel

# ESM alphabet ids of <cls>, <pad>, <eos>, <mask> (fair-esm and HF EsmTokenizer share them)
ESM_NON_RESIDUE_IDS = (0, 1, 2, 32)
# TAPE's IUPAC vocabulary ids of <pad>, <mask>, <cls>, <sep>
TAPE_NON_RESIDUE_IDS = (0, 1, 2, 3)


class EsmThermostabilityConfig(EsmConfig):
    """`EsmConfig` plus the head settings: `head_hidden_size` (512 in the paper) and the pooled-out token ids."""

    model_type = "esm_thermostability"

    def __init__(self, head_hidden_size: int = 512, pool_exclude_token_ids: list[int] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.head_hidden_size = head_hidden_size
        self.pool_exclude_token_ids = list(ESM_NON_RESIDUE_IDS if pool_exclude_token_ids is None
                                           else pool_exclude_token_ids)


class ThermostabilityHead(nn.Module):
    """Linear(hidden, head_hidden) -> LayerNorm -> ReLU -> Linear(head_hidden, num_labels), no dropout."""

    def __init__(self, config: EsmThermostabilityConfig | BertThermostabilityConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.head_hidden_size)
        self.norm = nn.LayerNorm(config.head_hidden_size)
        self.activation = nn.ReLU()
        self.out_proj = nn.Linear(config.head_hidden_size, config.num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.activation(self.norm(self.dense(pooled))))


def residue_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, exclude_ids: list[int]) -> torch.Tensor:
    """Bool (batch, length): True at the positions that are residues of the sequence (pooled)."""
    mask = ~torch.isin(input_ids, torch.tensor(exclude_ids, device=input_ids.device))
    if attention_mask is not None:
        mask &= attention_mask.bool()
    return mask


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` (batch, length, dim) over the True positions of `mask` (batch, length)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def classify(model: nn.Module, backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
             labels: torch.Tensor | None, **kwargs) -> SequenceClassifierOutput:
    """The forward of both models: backbone -> residue mean of the last layer -> head (-> cross-entropy)."""
    outputs = backbone(input_ids, attention_mask=attention_mask, **kwargs)
    pooled = masked_mean(outputs.last_hidden_state,
                         residue_mask(input_ids, attention_mask, model.config.pool_exclude_token_ids))
    logits = model.head(pooled)
    loss = None
    if labels is not None:
        loss = nn.functional.cross_entropy(logits.view(-1, model.config.num_labels), labels.view(-1))
    return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                    attentions=outputs.attentions)


class EsmForThermostability(EsmPreTrainedModel):
    """ESM backbone (`self.esm`, no pooler) + `ThermostabilityHead` on the residue mean of the last layer.

    The backbone's contact-prediction head is dropped: the task never uses it, so a checkpoint's
    `contact_head.*` weights are ignored on load and it is neither trained, pruned nor saved.
    """

    _keys_to_ignore_on_load_unexpected = [r"contact_head\.", r"lm_head\.", "position_embeddings.weight"]

    config_class = EsmThermostabilityConfig

    def __init__(self, config: EsmThermostabilityConfig):
        super().__init__(config)
        self.esm = EsmModel(config, add_pooling_layer=False)
        del self.esm.contact_head  # EsmModel.forward does not use it
        self.head = ThermostabilityHead(config)
        self.post_init()

    # transformers 5 re-applies on save the key renamings it used on load, and for ESM these include the legacy
    # `LayerNorm.gamma/beta` names (even a fresh EsmForMaskedLM saves them). Raw safetensors readers, such as the
    # Trainer's best-checkpoint reload and the pipeline's dense cache, do not map them back. Saving the names
    # `state_dict()` shows keeps every file readable by both them and `from_pretrained`.
    @property
    def _weight_conversions(self) -> list:
        return []

    @_weight_conversions.setter
    def _weight_conversions(self, value) -> None:
        pass

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        return classify(self, self.esm, input_ids, attention_mask, labels, **kwargs)

class BertThermostabilityConfig(BertConfig):
    """`BertConfig` plus the head settings, as `EsmThermostabilityConfig`; pooled-out ids default to TAPE's."""

    model_type = "bert_thermostability"

    def __init__(self, head_hidden_size: int = 512, pool_exclude_token_ids: list[int] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.head_hidden_size = head_hidden_size
        self.pool_exclude_token_ids = list(TAPE_NON_RESIDUE_IDS if pool_exclude_token_ids is None
                                           else pool_exclude_token_ids)


class BertForThermostability(BertPreTrainedModel):
    """BERT backbone (`self.bert`, no pooler) + `ThermostabilityHead`, as `EsmForThermostability`.

    A checkpoint's pooler and MLM-head weights are ignored on load: the head reads the residue mean.
    """

    _keys_to_ignore_on_load_unexpected = [r"pooler\.", r"cls\.", r"mlm\."]

    config_class = BertThermostabilityConfig

    def __init__(self, config: BertThermostabilityConfig):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.head = ThermostabilityHead(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        return classify(self, self.bert, input_ids, attention_mask, labels, **kwargs)


AutoConfig.register(EsmThermostabilityConfig.model_type, EsmThermostabilityConfig, exist_ok=True)
AutoModelForSequenceClassification.register(EsmThermostabilityConfig, EsmForThermostability, exist_ok=True)
AutoConfig.register(BertThermostabilityConfig.model_type, BertThermostabilityConfig, exist_ok=True)
AutoModelForSequenceClassification.register(BertThermostabilityConfig, BertForThermostability, exist_ok=True)
