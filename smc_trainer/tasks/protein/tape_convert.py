"""TAPE's pretrained ProteinBert (`tape-proteins`, "bert-base") as an HF `BertModel` folder with an IUPAC tokenizer.

TAPE saves a model as `config.json` + `pytorch_model.bin` (`ProteinModel.save_pretrained`); its
pretrained "bert-base" files are the same pair. The state dict is read with
`torch.load(..., weights_only=True)` (tensors only, never a full unpickle). Its names equal
`BertModel`'s once a `bert.` prefix is stripped; the masked-LM head (`mlm.*`) is dropped. The config
maps field by field to `BertConfig` (TAPE pads with id 0). The tokenizer has TAPE's IUPAC
vocabulary and adds `<cls>` ... `<sep>` as `TAPETokenizer.encode` does; the one difference: a letter
outside the vocabulary becomes `<unk>` where TAPE raises KeyError.

    python run_smc.py convert-tape TAPE_DIR HF_DIR      # then --model_name_or_path HF_DIR
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast
from transformers.utils import logging

from smc_trainer.errors import ExistingOutputError, MissingFileError, UsageError

logger = logging.get_logger(__name__)

SPECIAL_TOKENS = ("<pad>", "<mask>", "<cls>", "<sep>", "<unk>")
RESIDUES = "ABCDEFGHIKLMNOPQRSTUVWXYZ"  # no J, as in TAPE's IUPAC_VOCAB
IUPAC_VOCAB = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *RESIDUES))}
TAPE_CONFIG_NAME, TAPE_WEIGHTS_NAME = "config.json", "pytorch_model.bin"
# TAPE's ProteinBertConfig fields that BertConfig takes as they are; the rest (num_labels, finetuning_task,
# output_attentions, ...) describe TAPE's training, not the weights
BERT_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
               "type_vocab_size", "initializer_range", "layer_norm_eps")
REQUIRED_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
HIDDEN_ACTS = ("gelu", "relu", "swish")  # TAPE's get_activation_fn choices
DROPPED_PREFIXES = ("mlm.",)


def iupac_tokenizer(model_max_length: int | None = None) -> PreTrainedTokenizerFast:
    """TAPE's IUPAC tokenizer as a fast HF tokenizer: one token per character, `<cls>` ... `<sep>`, unknown -> <unk>."""
    core = Tokenizer(models.WordLevel(vocab=dict(IUPAC_VOCAB), unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.post_processor = processors.TemplateProcessing(
        single="<cls> $A <sep>", pair="<cls> $A <sep> $B <sep>",
        special_tokens=[("<cls>", IUPAC_VOCAB["<cls>"]), ("<sep>", IUPAC_VOCAB["<sep>"])])
    extra = {} if model_max_length is None else {"model_max_length": model_max_length}
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", mask_token="<mask>", cls_token="<cls>",
                                   sep_token="<sep>", unk_token="<unk>", **extra)


def bert_config(tape: dict[str, Any], where: str) -> BertConfig:
    """The `BertConfig` of a TAPE ProteinBert `config.json` (already parsed); `where` names the file in errors."""
    missing = [k for k in REQUIRED_FIELDS if k not in tape]
    if missing:
        raise UsageError(f"{where} is not a TAPE ProteinBert config: it lacks {', '.join(missing)}")
    if tape["vocab_size"] != len(IUPAC_VOCAB):
        raise UsageError(f"{where}: vocab_size {tape['vocab_size']} is not the {len(IUPAC_VOCAB)} tokens of TAPE's "
                         "IUPAC vocabulary (the only one the converter's tokenizer reproduces)")
    act = tape.get("hidden_act", "gelu")
    if act not in HIDDEN_ACTS:
        raise UsageError(f"{where}: hidden_act must be one of {', '.join(HIDDEN_ACTS)}; got {act!r}")
    values = {k: tape[k] for k in BERT_FIELDS if k in tape}
    return BertConfig(**values, pad_token_id=IUPAC_VOCAB["<pad>"], architectures=["BertModel"])


def bert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`BertModel` names: `bert.` stripped, the masked-LM head dropped."""
    out = {}
    for name, tensor in state.items():
        if name.startswith(DROPPED_PREFIXES):
            continue
        out[name.removeprefix("bert.")] = tensor
    return out


def read_tape(src: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config.json as a dict, the state dict) of a TAPE model folder; errors name the missing file."""
    if not os.path.isdir(src):
        raise MissingFileError(f"SRC {src!r} is not a folder (expected TAPE's {TAPE_CONFIG_NAME} and "
                               f"{TAPE_WEIGHTS_NAME} in it)")
    paths = [os.path.join(src, name) for name in (TAPE_CONFIG_NAME, TAPE_WEIGHTS_NAME)]
    missing = [os.path.basename(p) for p in paths if not os.path.isfile(p)]
    if missing:
        raise MissingFileError(f"SRC {src!r} lacks {' and '.join(missing)} (a TAPE model folder holds "
                               f"{TAPE_CONFIG_NAME} and {TAPE_WEIGHTS_NAME}, as ProteinModel.save_pretrained writes)")
    with open(paths[0], encoding="utf-8") as fh:
        config = json.load(fh)
    state = torch.load(paths[1], map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{paths[1]} is not a state dict of tensors")
    return config, state


def check_names(model: BertModel, state: dict[str, torch.Tensor], where: str) -> None:
    """Refuse a state dict whose names or shapes differ from `BertModel`'s, naming a few of the differences."""
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UsageError(f"{where} is not a TAPE ProteinBert state dict: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]} (of {len(missing)} and {len(unexpected)})")
    wrong = [n for n, t in state.items() if t.shape != expected[n].shape]
    if wrong:
        raise UsageError(f"{where}: shapes differ from its config.json for {wrong[:5]}, e.g. {wrong[0]} "
                         f"{tuple(state[wrong[0]].shape)} vs {tuple(expected[wrong[0]].shape)}")


def convert_tape(src: str, dest: str, overwrite: bool = False) -> str:
    """Write TAPE folder `src` as an HF folder `dest` (BertModel config + safetensors + IUPAC tokenizer); returns it."""
    if os.path.isdir(dest) and os.listdir(dest) and not overwrite:
        raise ExistingOutputError(f"DEST {dest!r} exists and is not empty; choose another folder or pass --overwrite")
    tape_config, tape_state = read_tape(src)
    config = bert_config(tape_config, os.path.join(src, TAPE_CONFIG_NAME))
    state = bert_state_dict(tape_state)
    with torch.device("meta"):
        skeleton = BertModel(config)
    check_names(skeleton, state, os.path.join(src, TAPE_WEIGHTS_NAME))
    model = BertModel(config)
    model.load_state_dict(state, strict=True)
    os.makedirs(dest, exist_ok=True)
    model.save_pretrained(dest)
    iupac_tokenizer(model_max_length=config.max_position_embeddings).save_pretrained(dest)
    logger.info(f"convert-tape: {src} -> {dest} ({config.num_hidden_layers} layers, hidden {config.hidden_size}, "
                f"{sum(t.numel() for t in state.values())} weights)")
    return dest


def convert_tape_command(argv: list[str]) -> dict[str, float]:
    """`run_smc.py convert-tape SRC DEST [--overwrite]`."""
    parser = argparse.ArgumentParser(
        prog="run_smc.py convert-tape",
        description="Convert TAPE's ProteinBert (config.json + pytorch_model.bin) into an HF BertModel folder with an "
                    "IUPAC tokenizer, for --model_name_or_path of the protein recipes.")
    parser.add_argument("src", help="TAPE model folder: config.json and pytorch_model.bin")
    parser.add_argument("dest", help="output folder (created; must be empty unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty DEST")
    ns = parser.parse_args(argv)
    logger.warning(f"Converted TAPE ProteinBert into {convert_tape(ns.src, ns.dest, overwrite=ns.overwrite)}")
    return {"converted": 1.0}
