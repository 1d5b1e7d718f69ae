"""Tiny arithmetic data and models for tests: word problems in the SVAMP authors' CSV schema, a word-level
tokenizer that splits `number0` into `number` + `0` (as real subword tokenizers do), a tiny BERT encoder
saved as a local checkpoint, and a 2-fold cross-validation recipe."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

# (question template, equation): the tiny benchmark's problem types; numbers fill number0..number2
TEMPLATES = [
    ("tom has number0 apples . he gets number1 more . how many apples does he have ?", "+ number0 number1"),
    ("tom has number0 apples . he eats number1 of them . how many apples are left ?", "- number0 number1"),
    ("a box holds number0 pens . how many pens are in number1 boxes ?", "* number0 number1"),
    ("number0 pens are shared by number1 kids . how many pens does each kid get ?", "/ number0 number1"),
    ("tom has number0 apples and number1 pears . he buys number2 more pears . how many fruits now ?",
     "+ + number0 number1 number2"),
    ("a shop sells number0 pens at number1 cents each and gives number2 away free . how many cents ?",
     "* - number0 number2 number1"),
    ("what is number0 percent of number1 ?", "/ * number0 number1 100.0"),
]
CSV_FIELDS = ["Question", "Numbers", "Equation", "Answer", "group_nums", "Body", "Ques_Statement"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def problem(i: int, offset: int = 0) -> dict[str, str]:
    """Problem i of the tiny benchmark (deterministic), as one CSV row."""
    question, equation = TEMPLATES[i % len(TEMPLATES)]
    count = max(int(t[6:]) for t in equation.split() if t.startswith("number")) + 1
    numbers = [float(2 + (7 * i + 3 * k + offset) % 23) for k in range(count)]
    from smc_trainer.tasks.arithmetic.equations import evaluate_prefix

    answer = evaluate_prefix(equation.split(), numbers)
    body, _, ques = question.rpartition(" . ")
    return {"Question": question, "Numbers": " ".join(f"{x:.1f}" for x in numbers), "Equation": equation,
            "Answer": f"{answer:.4f}", "group_nums": str(quantity_cells(question)), "Body": body + " .",
            "Ques_Statement": ques}


def quantity_cells(question: str) -> list[int]:
    """A `group_nums` in the SVAMP files' shape: the word before, the placeholder and the word after each number."""
    words = question.split()
    cells = [i + d for i, w in enumerate(words) if w.startswith("number") for d in (-1, 0, 1)]
    return [i for i in cells if 0 <= i < len(words)]


def write_csv(path: Path, rows: list[dict[str, str]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def write_cv_data(root: Path, name: str = "cv_tiny", folds: int = 2, train: int = 8, dev: tuple[int, ...] = (3, 5)
                  ) -> Path:
    """`root/name/fold<k>/{train,dev}.csv` in the real layout; dev folds of different sizes (pooling matters)."""
    for k in range(folds):
        write_csv(root / name / f"fold{k}" / "train.csv", [problem(i, offset=k) for i in range(train)])
        write_csv(root / name / f"fold{k}" / "dev.csv", [problem(i + 100, offset=k) for i in range(dev[k])])
    return root


def write_shipped_layouts(root: Path) -> Path:
    """Tiny data where the shipped recipes look for it under --data_dir: fold 0 of `cv_mawps` and `cv_asdiv-a`
    (4 test problems each) and `mawps-asdiv-a_svamp` (6 test problems)."""
    for name in ("cv_mawps", "cv_asdiv-a"):
        write_cv_data(root, name=name, folds=1, dev=(4,))
    write_csv(root / "mawps-asdiv-a_svamp" / "train.csv", [problem(i) for i in range(8)])
    write_csv(root / "mawps-asdiv-a_svamp" / "dev.csv", [problem(i + 50) for i in range(6)])
    return root


def write_cv_recipe(path: Path, name: str = "cv_tiny", folds: int = 2) -> str:
    path.write_text(
        "task: arithmetic\nmetric: accuracy\n"
        f"folds: {folds}\nsplits:\n  train: {name}/fold{{fold}}/train.csv\n  validation: null\n"
        f"  test: {name}/fold{{fold}}/dev.csv\n"
        "args:\n  num_train_epochs: 1\n  per_device_train_batch_size: 4\n  eval_strategy: 'no'\n"
        "  save_strategy: 'no'\n", encoding="utf-8")
    return str(path)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the templates' words and the digits; digits are split off words."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = {w for q, _ in TEMPLATES for w in q.split() if not w.startswith("number")}
    vocab = {tok: i for i, tok in enumerate([*SPECIAL, "number", *map(str, range(10)), *sorted(words)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=64, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def tiny_encoder(vocab_size: int, seed: int = 0, hidden: int = 16) -> BertModel:
    torch.manual_seed(seed)
    return BertModel(BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=2 * hidden, max_position_embeddings=64, pad_token_id=0))


def write_encoder(directory: Path) -> str:
    """A tiny BERT encoder and its tokenizer saved as a local checkpoint (what --model_name_or_path reads)."""
    tokenizer = tiny_tokenizer()
    tiny_encoder(len(tokenizer)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


TINY_GTS_FLAGS = ["--gts_hidden_size", "16", "--gts_dropout", "0.0", "--max_seq_length", "64",
                  "--report_to", "none", "--disable_tqdm", "true", "--log_level", "warning", "--use_cpu"]
