"""The model and tokenizer of an arithmetic run: a new GTS or Graph2Tree on a pretrained encoder, or a saved one.

`--model_name_or_path` names either any `AutoModel` encoder (Hub id or folder; `roberta-base` in the
recipes), which gets a new GTS (or, with `--arithmetic_model graph2tree`, Graph2Tree) decoder whose vocabulary
comes from the training equations, or a saved checkpoint of that model (its config has `model_type: gts` or
`graph2tree`), which is loaded whole with its own vocabulary.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset
from transformers import AutoModel, AutoModelForSeq2SeqLM
from transformers.utils import logging

from smc_trainer.errors import UsageError
from smc_trainer.tasks.arithmetic.configuration_graph2tree import Graph2TreeConfig
from smc_trainer.tasks.arithmetic.configuration_gts import GTSConfig
from smc_trainer.tasks.arithmetic.data import max_numbers
from smc_trainer.tasks.arithmetic.equations import tokenize
from smc_trainer.tasks.arithmetic.modeling_graph2tree import Graph2TreeForMathWordProblems
from smc_trainer.tasks.arithmetic.modeling_gts import GTSForMathWordProblems
from smc_trainer.tasks.arithmetic.vocab import EquationVocab
from smc_trainer.tasks.loading import checkpoint_name, hub_kwargs, load_tokenizer_and_config, offline_hint

logger = logging.get_logger(__name__)

MODEL_CLASSES: dict[str, type[GTSForMathWordProblems]] = {
    GTSConfig.model_type: GTSForMathWordProblems,
    Graph2TreeConfig.model_type: Graph2TreeForMathWordProblems,
}
"""--arithmetic_model -> its class; a value is also the `model_type` of the checkpoints it saves."""


def arithmetic_model(training_args) -> str:
    """The run's --arithmetic_model (gts for arguments without the flag)."""
    return getattr(training_args, "arithmetic_model", GTSConfig.model_type)


def is_graph2tree(training_args) -> bool:
    return arithmetic_model(training_args) == Graph2TreeConfig.model_type


def is_seq2seq(config: Any) -> bool:
    """An encoder-decoder checkpoint (T5, BART, ...) is trained as a seq2seq model; any other as GTS's encoder."""
    return bool(getattr(config, "is_encoder_decoder", False)) and not isinstance(config, GTSConfig)


def check_decoding_flags(name: str, config: Any, training_args) -> None:
    """GTS decodes by beam search in its own evaluation forward; a seq2seq model must generate at evaluation."""
    if is_seq2seq(config) and not training_args.predict_with_generate:
        raise UsageError(f"{name!r} is an encoder-decoder ({config.model_type}) model, trained to write the prefix "
                         "equation: pass --predict_with_generate true so that evaluation scores generated equations")
    if not is_seq2seq(config) and training_args.predict_with_generate:
        raise UsageError("--predict_with_generate does not apply to GTS: it decodes equations by beam search in its "
                         "evaluation forward (--generation_num_beams / --generation_max_length set the beam)")
    choice = arithmetic_model(training_args)
    if is_seq2seq(config) and choice != GTSConfig.model_type:
        raise UsageError(f"--arithmetic_model {choice} puts its tree decoder on an encoder, but {name!r} is an "
                         f"encoder-decoder ({config.model_type}) model; pass an encoder checkpoint, or leave "
                         "--arithmetic_model at gts to train the seq2seq model")
    if isinstance(config, GTSConfig) and config.model_type != choice:
        raise UsageError(f"{name!r} is a saved {config.model_type} model but --arithmetic_model is {choice}; pass "
                         f"--arithmetic_model {config.model_type} to load it, or an encoder checkpoint for a new "
                         f"{choice}")


def load_model_and_tokenizer(model_args, data_args, training_args,
                             raw: dict[str, Dataset | None], recipe=None) -> tuple[Any, Any, str]:
    """(model, fast tokenizer, where the weights came from): GTS over an encoder, or an encoder-decoder model
    (`seq2seq`); errors name the id and the local-folder flag, and a causal LM's the recipe that scores it."""
    from smc_trainer.tasks.causal_lm.redirect import refuse_causal_lm

    name, common = checkpoint_name(model_args), hub_kwargs(model_args)
    with offline_hint(name, "a local folder with the encoder's config, weights and tokenizer as "
                      "--model_name_or_path (and the data as --data_dir)"):
        tokenizer, config = load_tokenizer_and_config(model_args)
        refuse_causal_lm(config, model_args, recipe, "arithmetic")
        check_decoding_flags(name, config, training_args)  # before any weights load
        if is_seq2seq(config):
            if model_args.from_scratch:
                return AutoModelForSeq2SeqLM.from_config(config), tokenizer, f"{name} config, random weights (seq2seq)"
            model = AutoModelForSeq2SeqLM.from_pretrained(name, config=config, **common)
            return model, tokenizer, f"{name} (pretrained seq2seq, writes the prefix equation)"
        if isinstance(config, GTSConfig):
            model = MODEL_CLASSES[config.model_type].from_pretrained(name, config=config, **common)
            source = f"{name} ({config.model_type})"
        else:
            model, source = _new_model(name, config, common, model_args, data_args, training_args, raw)
    if not tokenizer.is_fast:
        raise UsageError(f"tokenizer of {name!r} is not a fast tokenizer; number positions need its offsets")
    needed = max_numbers(*raw.values())
    if needed > model.config.max_numbers:
        raise UsageError(f"a problem has {needed} numbers but the GTS checkpoint {name!r} has "
                         f"{model.config.max_numbers} number slots")
    if training_args.generation_num_beams:
        model.config.beam_size = training_args.generation_num_beams
    if training_args.generation_max_length:
        model.config.max_decode_length = training_args.generation_max_length
    return model, tokenizer, source


def _new_model(name: str, config, common: dict, model_args, data_args, training_args,
               raw) -> tuple[GTSForMathWordProblems, str]:
    """A new GTS or Graph2Tree over the encoder `name`, with the vocabulary of the training equations."""
    choice = arithmetic_model(training_args)
    vocab = EquationVocab.from_equations((tokenize(e) for e in raw["train"]["Equation"]), max_numbers(*raw.values()))
    logger.info(f"arithmetic: operators {' '.join(vocab.operators)}, constants {' '.join(vocab.constants) or '-'}, "
                f"{vocab.max_numbers} number slots")
    if model_args.from_scratch:
        encoder, source = AutoModel.from_config(config), f"{name} config, random weights + new {choice}"
    else:
        encoder = AutoModel.from_pretrained(name, config=config, **common)
        source = f"{name} (pretrained) + new {choice}"
    hidden = training_args.graph2tree_hidden_size if is_graph2tree(training_args) else training_args.gts_hidden_size
    model = MODEL_CLASSES[choice].from_encoder(
        encoder, hidden_size=hidden, num_layers=training_args.gts_num_layers, dropout=training_args.gts_dropout,
        encoder_dropout=training_args.gts_encoder_dropout, operators=list(vocab.operators),
        constants=list(vocab.constants), max_numbers=vocab.max_numbers)
    return model, source
