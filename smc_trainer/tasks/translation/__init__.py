"""Multilingual translation (SMC-Bench 2.4): mBART fine-tuned many-to-many through English.

Training mixes both directions of every `--train_languages` pair with English (2-to-2: fr, cs;
5-to-5: + de, gu, ja; 10-to-10: + my, ro, ru, vi, zh). Every model is evaluated on both
directions of every `--eval_languages` pair (all ten: 20 directions) whatever it was trained on;
each direction is a named evaluation subset (`eval_fr-en_bleu`, ...) decoded with its own target
language code, and the reported `eval_bleu` / `test_bleu` is the mean sacreBLEU over directions.

Modules: `languages` (codes and their placement for mBART-cc25 / mBART-50), `data` (OPUS-100 or
local files), `preprocess` (token ids), `model` (checkpoint), `metric` (sacreBLEU, mean).
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset
from transformers import DataCollatorForSeq2Seq
from transformers.trainer_utils import IntervalStrategy
from transformers.utils import logging

from smc_trainer.errors import UsageError
from smc_trainer.tasks import TaskBundle
from smc_trainer.tasks.translation.data import first_rows, load_pair, mix
from smc_trainer.tasks.translation.languages import (
    CODE_FORMATS,
    SMC_LANGUAGES,
    LanguageCodes,
    direction_name,
    directions,
    parse_languages,
    resolve_format,
)
from smc_trainer.tasks.translation.metric import BleuMetric, make_aggregate, parse_bleu_tokenize
from smc_trainer.tasks.translation.model import load_model_and_tokenizer
from smc_trainer.tasks.translation.preprocess import encode_direction

logger = logging.get_logger(__name__)

EVAL_SPLITS = ("validation", "test")
Pairs = dict[str, dict[str, Dataset]]  # language -> split -> OPUS-100 rows of the language-English pair


def check_training_args(training_args: Any) -> None:
    """BLEU needs generated text, and each direction needs its own target code at generation, which only the
    evaluation after training (one subset at a time) provides."""
    if not training_args.predict_with_generate:
        raise UsageError("translation reports BLEU of generated text: pass --predict_with_generate true; got false")
    if training_args.eval_strategy != IntervalStrategy.NO:
        raise UsageError("translation: --eval_strategy must be no; got "
                         f"{training_args.eval_strategy.value!r}. Each direction is decoded with its own target "
                         "language code after training; in-training evaluation would decode all with one.")


def build(model_args: Any, data_args: Any, training_args: Any, recipe: Any) -> TaskBundle:
    """mBART, the mixed training directions, the 2 x len(eval_languages) evaluation directions and BLEU."""
    check_training_args(training_args)
    train_languages = parse_languages(data_args.train_languages, "train_languages")
    eval_languages = parse_languages(data_args.eval_languages, "eval_languages", default=SMC_LANGUAGES)
    tokenize_by_lang = parse_bleu_tokenize(data_args.bleu_tokenize)
    if data_args.lang_code_format not in CODE_FORMATS:
        raise UsageError(f"--lang_code_format must be one of {', '.join(CODE_FORMATS)}; "
                         f"got {data_args.lang_code_format!r}")
    model, tokenizer, source = load_model_and_tokenizer(model_args, training_args)
    code_format = resolve_format(tokenizer, data_args.lang_code_format)
    codes = LanguageCodes(tokenizer, train_languages + eval_languages, code_format)
    logger.info(f"translation: model {source}, {code_format} language-code format; training on "
                f"{','.join(train_languages)} <-> en, evaluating {2 * len(eval_languages)} directions")
    pairs = load_pairs(train_languages, eval_languages, data_args, model_args, recipe)
    return assemble(model, tokenizer, source, codes, pairs, train_languages, eval_languages, tokenize_by_lang,
                    data_args, training_args)


def load_pairs(train_languages: list[str], eval_languages: list[str], data_args: Any, model_args: Any,
               recipe: Any) -> Pairs:
    """Each language's pair with English, with the splits it is needed for; evaluation splits must cover every
    evaluation language (an average over fewer directions would not be comparable) or none."""
    pairs: Pairs = {}
    for lang in dict.fromkeys(train_languages + eval_languages):
        wanted = (("train",) if lang in train_languages else ()) + (EVAL_SPLITS if lang in eval_languages else ())
        pairs[lang] = load_pair(lang, wanted, data_args, model_args, recipe)
        if lang in train_languages and "train" not in pairs[lang]:
            raise UsageError(f"no train split for the {lang}-en pair (--train_languages includes {lang})")
    for split in EVAL_SPLITS:
        missing = [lang for lang in eval_languages if split not in pairs[lang]]
        if 0 < len(missing) < len(eval_languages):
            raise UsageError(f"the {split} split is missing for {', '.join(missing)} but present for the other "
                             "--eval_languages; provide it for all of them or for none")
    return pairs


def assemble(model: Any, tokenizer: Any, source: str, codes: LanguageCodes, pairs: Pairs, train_languages: list[str],
             eval_languages: list[str], tokenize_by_lang: dict[str, str], data_args: Any,
             training_args: Any) -> TaskBundle:
    """Tokenize every direction and wrap them with the model, collator, BLEU and the per-direction decoding."""
    train_lengths = (data_args.max_source_length, data_args.max_target_length)
    eval_length = int(getattr(model.config, "max_position_embeddings", 1024))

    def encode(rows: Dataset, src: str, tgt: str, lengths: tuple[int, int]) -> Dataset:
        return encode_direction(rows, src, tgt, tokenizer, codes, lengths, data_args, training_args)

    train = mix([encode(first_rows(pairs[lang]["train"], data_args.max_train_samples), s, t, train_lengths)
                 for lang in train_languages for s, t in directions([lang])])
    evals: dict[str, dict[str, Dataset] | None] = {}
    for split in EVAL_SPLITS:
        subsets = {direction_name(s, t): encode(first_rows(pairs[lang][split], data_args.max_eval_samples), s, t,
                                                (eval_length, eval_length))
                   for lang in eval_languages if split in pairs[lang] for s, t in directions([lang])}
        evals[split] = subsets or None
    names = [direction_name(s, t) for s, t in directions(eval_languages)]
    half = training_args.fp16 or training_args.bf16
    return TaskBundle(
        model=model,
        processing_class=tokenizer,
        train_dataset=train,
        eval_dataset=evals["validation"],
        test_dataset=evals["test"],
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, pad_to_multiple_of=8 if half else None),
        compute_metrics=BleuMetric(tokenizer, codes, tokenize_by_lang),
        chance_level=None,
        model_source=source,
        aggregate_metrics=make_aggregate(names),
        eval_kwargs={direction_name(s, t): codes.generation_kwargs(t) for s, t in directions(eval_languages)},
    )


__all__ = ["assemble", "build", "check_training_args", "load_pairs"]
