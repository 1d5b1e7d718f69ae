"""Commonsense reasoning (CSQA, WinoGrande, RACE): schema adapters, inputs that never lose an answer,
RACE's middle/high subsets, the offline Hub errors, and every recipe end to end on a tiny RoBERTa."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import AutoModelForMultipleChoice, AutoTokenizer, PreTrainedTokenizerFast, TrainingArguments

from smc_trainer.runs import pipeline
from smc_trainer.runs.config import parse_run_config
from smc_trainer.runs.recipes import load_recipe
from smc_trainer.tasks.multiple_choice import (
    load_model_and_tokenizer,
    load_raw_splits,
    pooled_accuracy,
    prepare_split,
    tokenize_batch,
)
from smc_trainer.tasks.multiple_choice_schemas import (
    race_candidate,
    race_label,
    race_subset,
    to_canonical,
    winogrande_label,
    winogrande_segments,
)
from smc_trainer.training.arguments import DataArguments, ModelArguments

MAX_LEN = 64

# ---- tiny data in the real Hub schemas ---------------------------------------------------------------

THINGS = [("book", "library"), ("fish", "river"), ("bread", "bakery"), ("car", "garage"), ("cow", "farm"),
          ("plane", "airport"), ("tree", "forest"), ("shell", "beach")]
PLACES = [p for _, p in THINGS]


def csqa_rows(n: int, offset: int = 0) -> list[dict]:
    """tau/commonsense_qa rows: id, question, question_concept, choices {label, text}, answerKey."""
    rows = []
    for i in range(n):
        thing, place = THINGS[(i + offset) % len(THINGS)]
        others = [p for p in PLACES if p != place][i % 3:i % 3 + 4]
        texts = others[:i % 5] + [place] + others[i % 5:]
        rows.append({"id": f"q{i}", "question": f"Where would you find a {thing}?", "question_concept": thing,
                     "choices": {"label": list("ABCDE"), "text": texts}, "answerKey": "ABCDE"[i % 5]})
    return rows


def winogrande_rows(n: int, offset: int = 0) -> list[dict]:
    """allenai/winogrande rows: sentence with one `_`, option1, option2, answer "1"/"2"."""
    rows = []
    for i in range(n):
        small, big = THINGS[(i + offset) % len(THINGS)][0], THINGS[(i + offset + 1) % len(THINGS)][0]
        flip = i % 2
        rows.append({"sentence": f"The {small} does not fit in the {big} because the _ is too big.",
                     "option1": big if flip else small, "option2": small if flip else big,
                     "answer": "2" if flip else "1"})
    return rows


def race_rows(n: int, level: str, offset: int = 0) -> list[dict]:
    """ehovy/race rows: example_id ("middle3.txt"), article, answer "A".."D", question (some cloze), options."""
    rows = []
    for i in range(n):
        thing, place = THINGS[(i + offset) % len(THINGS)]
        article = f"Tom went to the {place} to look for a {thing}. He found it there and went home happy."
        question = "Tom went to the _ to look for it." if i % 2 else f"Where did Tom find the {thing}?"
        options = [p for p in PLACES if p != place][:3]
        options.insert(i % 4, place)
        rows.append({"example_id": f"{level}{i // 2}.txt", "article": article, "answer": "ABCD"[i % 4],
                     "question": question, "options": options})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return str(path)


def write_csv(path: Path, rows: list[dict]) -> str:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


# ---- a tiny RoBERTa-style tokenizer and model, saved like a Hub checkpoint ----------------------------


def corpus() -> list[str]:
    texts = ["Q: A:"]
    for r in csqa_rows(8):
        texts += [r["question"], *r["choices"]["text"]]
    for r in winogrande_rows(8):
        texts += [r["sentence"], r["option1"], r["option2"]]
    for r in race_rows(8, "middle"):
        texts += [r["article"], r["question"], *r["options"]]
    return texts


def roberta_style_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level, lower-cased, with RoBERTa's special tokens and pair template `<s> A </s></s> B </s>`."""
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    words = [w for text in corpus() for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text.lower())]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys([*specials, *words]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=MAX_LEN, bos_token="<s>", eos_token="</s>",
                                   sep_token="</s>", cls_token="<s>", pad_token="<pad>", unk_token="<unk>",
                                   mask_token="<mask>", model_input_names=["input_ids", "attention_mask"])


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return roberta_style_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer) -> str:
    """A tiny RobertaForMultipleChoice with its tokenizer in a folder, as `--model_name_or_path` expects."""
    from transformers import RobertaConfig, RobertaForMultipleChoice

    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=MAX_LEN + 2, type_vocab_size=1,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2)
    path = tmp_path_factory.mktemp("tiny-roberta")
    RobertaForMultipleChoice(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def train_args(tmp_path) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ---- recipes: the paper's settings (SMC-BENCH.md 2.1) ----------------------------------------------------


def test_winogrande_and_race_recipes_have_the_paper_settings():
    common = {"model_name_or_path": "FacebookAI/roberta-large", "learning_rate": 1e-5, "adam_beta1": 0.9,
              "adam_beta2": 0.98, "adam_epsilon": 1e-6, "weight_decay": 0.01, "max_grad_norm": 0.0}
    wino, race = load_recipe("winogrande"), load_recipe("race")
    for recipe in (wino, race):
        assert recipe.task == "multiple_choice" and recipe.metric == "accuracy"
        assert {k: recipe.args[k] for k in common} == common
    assert (wino.chance_level, race.chance_level) == (0.5, 0.25)
    assert (wino.args["dataset_name"], wino.args["dataset_config_name"]) == ("allenai/winogrande", "winogrande_xl")
    assert (wino.args["per_device_train_batch_size"], wino.args["max_steps"], wino.args["warmup_steps"]) == (
        32, 23750, 2375)
    assert wino.args["lr_scheduler_type"] == "polynomial" and wino.split("test") is None  # hidden test labels
    assert (race.args["dataset_name"], race.args["dataset_config_name"], race.subsets) == (
        "ehovy/race", "all", ["middle", "high"])
    assert (race.args["per_device_train_batch_size"], race.args["num_train_epochs"], race.args["warmup_steps"]) == (
        16, 3, 500)
    assert "max_steps" not in race.args and race.split("test") == "test"
    config = parse_run_config(["--recipe", "race", "--output_dir", "unused"])
    assert config.training_args.lr_scheduler_type == "constant_with_warmup"  # UNCONFIRMED in the paper, see YAML


# ---- adapters: exact canonical examples -------------------------------------------------------------


def test_winogrande_segments_keep_the_option_out_of_the_context():
    sentence = "The trophy doesn't fit into the brown suitcase because the _ is too large."
    assert winogrande_segments(sentence, ["trophy", "suitcase"]) == (
        "The trophy doesn't fit into the brown suitcase because the",
        ["trophy is too large.", "suitcase is too large."])
    assert winogrande_segments("_ was late, so Mary waited.", ["John", "Ann"]) == (
        "", ["John was late, so Mary waited.", "Ann was late, so Mary waited."])
    assert winogrande_segments("Sam gave the book to _.", ["Kim", "Lee"]) == ("Sam gave the book to", ["Kim.", "Lee."])
    with pytest.raises(ValueError, match="no blank"):
        winogrande_segments("No blank here.", ["a", "b"])


def test_winogrande_adapter_and_hidden_labels():
    rows = winogrande_rows(2) + [{"sentence": "Ann paid Bo because _ owed money.", "option1": "Ann",
                                  "option2": "Bo", "answer": ""}]
    canonical = to_canonical(Dataset.from_list(rows), where="winogrande")
    assert canonical[0] == {"question": "The book does not fit in the fish because the _ is too big.",
                            "choices": ["book is too big.", "fish is too big."], "label": 0,
                            "context": "The book does not fit in the fish because the"}
    assert canonical[1]["choices"] == ["bread is too big.", "fish is too big."] and canonical[1]["label"] == 1
    assert canonical[2]["label"] == -1
    assert [winogrande_label(a) for a in ("1", "2", "", None, 2, 1.0, float("nan"))] == [0, 1, -1, -1, 1, 0, -1]
    with pytest.raises(ValueError, match="'1', '2' or ''"):
        winogrande_label("3")


def test_race_candidates_cloze_and_question():
    cloze = "The girls at Paget High School are not allowed to wear skirts in that    _  ."
    assert race_candidate(cloze, "short skirts give the wrong impression") == (
        "The girls at Paget High School are not allowed to wear skirts in that short skirts give the wrong "
        "impression .")
    assert race_candidate("What is the best title?", "Oil") == "What is the best title? Oil"
    assert race_candidate("It costs ___ dollars.", r"\1 and 2") == r"It costs \1 and 2 dollars."
    assert [race_subset(x) for x in ("high132.txt", "middle3.txt", "", None)] == ["high", "middle", None, None]
    assert [race_label(a, 4) for a in ("A", "d", "")] == [0, 3, -1]
    with pytest.raises(ValueError, match="one of A, B, C, D"):
        race_label("E", 4)


def test_race_adapter():
    canonical = to_canonical(Dataset.from_list(race_rows(2, "high")), where="race")
    article = "Tom went to the library to look for a book. He found it there and went home happy."
    assert canonical[0] == {"question": "Where did Tom find the book?", "context": article, "label": 0,
                            "choices": ["Where did Tom find the book? library", "Where did Tom find the book? river",
                                        "Where did Tom find the book? bakery", "Where did Tom find the book? garage"],
                            "subset": "high"}
    assert canonical[1]["choices"][:2] == ["Tom went to the library to look for it.",
                                           "Tom went to the river to look for it."]
    assert canonical[1]["label"] == 1


# ---- tokenization: CSQA unchanged, contexts truncated, answers never --------------------------------


def test_csqa_encoding_is_the_q_a_sentence_pair(tokenizer):
    canonical = to_canonical(Dataset.from_list(csqa_rows(1)))[:]
    out = tokenize_batch(canonical, tokenizer, MAX_LEN)
    for choice, ids in zip(canonical["choices"][0], out["input_ids"][0]):
        assert ids == tokenizer(f"Q: {canonical['question'][0]}", f"A: {choice}")["input_ids"]


@pytest.mark.parametrize("schema", ["winogrande", "race"])
def test_long_context_is_truncated_and_every_option_kept(tokenizer, schema):
    filler = " ".join(["the farm"] * 60)
    if schema == "winogrande":
        rows = [{"sentence": f"{filler} and the book does not fit in the car because the _ is too big.",
                 "option1": "book", "option2": "car", "answer": "1"}]
    else:
        rows = race_rows(2, "middle")
        for r in rows:
            r["article"] = filler + " " + r["article"]
    canonical = to_canonical(Dataset.from_list(rows))[:]
    max_len = 24
    out = tokenize_batch(canonical, tokenizer, max_len)
    for context, choices, encoded in zip(canonical["context"], canonical["choices"], out["input_ids"]):
        for choice, ids in zip(choices, encoded):
            answer, kept = ids_of(tokenizer, choice), max_len - len(ids_of(tokenizer, choice)) - 4
            assert len(ids) == max_len
            assert ids == [0, *ids_of(tokenizer, context)[:kept], 2, 2, *answer, 2]


def test_per_choice_contexts(tokenizer):
    data = {"question": ["q"], "choices": [["river", "farm"]], "label": [1], "context": [["a fish", "a cow"]]}
    out = tokenize_batch(data, tokenizer, MAX_LEN)
    assert out["input_ids"][0] == [tokenizer("a fish", "river")["input_ids"], tokenizer("a cow", "farm")["input_ids"]]
    with pytest.raises(ValueError, match="one text per choice"):
        to_canonical(Dataset.from_dict({**data, "context": [["only one"]]}))


def test_an_answer_longer_than_max_seq_length_is_an_error(tokenizer):
    rows = winogrande_rows(1)
    rows[0]["option1"] = " ".join(["book"] * 30)
    canonical = to_canonical(Dataset.from_list(rows))[:]
    for max_len in (16, 38):  # 34 answer tokens + 4 special tokens leave 38 - 38 = 0 for the context
        with pytest.raises(ValueError, match=f"1 of 2 .* --max_seq_length {max_len} .* needs 34 tokens . 4 special"):
            tokenize_batch(canonical, tokenizer, max_len)
    first = tokenize_batch(canonical, tokenizer, 39)["input_ids"][0][0]  # one context token left: "the"
    assert first == [0, *ids_of(tokenizer, "The"), 2, 2, *ids_of(tokenizer, canonical["choices"][0][0]), 2]


# ---- local files and RACE's subsets -------------------------------------------------------------------


def test_winogrande_csv_and_jsonl_local_files(tmp_path, tokenizer, train_args):
    rows = winogrande_rows(3)
    rows[2]["answer"] = ""
    data_args = DataArguments(train_file=write_jsonl(tmp_path / "train.jsonl", rows),
                              validation_file=write_csv(tmp_path / "dev.csv", rows), max_seq_length=MAX_LEN)
    raw = load_raw_splits(data_args, ModelArguments(cache_dir=str(tmp_path / "cache")), load_recipe("winogrande"))
    assert raw["test"] is None
    for split in ("train", "validation"):
        canonical = to_canonical(raw[split])
        assert canonical["label"] == [0, 1, -1] and canonical["choices"][1] == ["bread is too big.", "fish is too big."]
    prepared = prepare_split(raw["validation"], "validation", tokenizer, data_args, train_args)
    assert prepared.column_names == ["label", "input_ids", "attention_mask"] and prepared["label"] == [0, 1]


def test_race_local_eval_file_is_split_into_middle_and_high(tmp_path, tokenizer, train_args, caplog):
    rows = race_rows(3, "middle") + race_rows(5, "high", offset=3) + race_rows(1, "college")
    path = write_jsonl(tmp_path / "test.jsonl", rows)
    data_args = DataArguments(test_file=path, max_seq_length=MAX_LEN)
    raw = load_raw_splits(data_args, ModelArguments(cache_dir=str(tmp_path / "cache")), load_recipe("race"))
    prepared = prepare_split(raw["test"], "test", tokenizer, data_args, train_args, subsets=["middle", "high"])
    assert list(prepared) == ["middle", "high"]
    assert prepared["middle"]["label"] == [0, 1, 2] and prepared["high"]["label"] == [0, 1, 2, 3, 0]
    assert "1 row(s) of subset(s) ['college'] are not among the recipe's subsets" in caplog.text
    first_high = to_canonical(Dataset.from_list(rows[3:4]))[:]
    assert prepared["high"][0]["input_ids"] == tokenize_batch(first_high, tokenizer, MAX_LEN)["input_ids"][0]
    train = prepare_split(raw["test"], "train", tokenizer, data_args, train_args, subsets=["middle", "high"])
    assert isinstance(train, Dataset) and len(train) == 9  # training never splits
    no_ids = [{k: v for k, v in r.items() if k != "example_id"} for r in rows]
    with pytest.raises(ValueError, match="rows name no subset"):
        prepare_split(Dataset.from_list(no_ids), "test", tokenizer, data_args, train_args, subsets=["middle", "high"])


def test_race_hub_loading_uses_all_for_training_and_one_config_per_subset(monkeypatch, tmp_path, tokenizer,
                                                                          train_args):
    import smc_trainer.tasks.multiple_choice as mc

    calls = []

    def fake_load_dataset(name, config=None, cache_dir=None):
        calls.append((name, config))
        levels = ["middle", "high"] if config == "all" else [config]
        return DatasetDict({s: Dataset.from_list([r for lv in levels for r in race_rows(4, lv)])
                            for s in ("train", "validation", "test")})

    monkeypatch.setattr(mc, "load_dataset", fake_load_dataset)
    recipe = load_recipe("race")
    data_args = DataArguments(dataset_name="ehovy/race", dataset_config_name="all", max_seq_length=MAX_LEN)
    raw = load_raw_splits(data_args, ModelArguments(), recipe)
    assert calls == [("ehovy/race", "all"), ("ehovy/race", "middle"), ("ehovy/race", "high")]
    assert len(raw["train"]) == 8 and {k: len(v) for k, v in raw["test"].items()} == {"middle": 4, "high": 4}
    assert set(raw["validation"]["high"]["example_id"]) == {"high0.txt", "high1.txt"}
    prepared = prepare_split(raw["validation"], "validation", tokenizer, data_args, train_args, recipe.subsets)
    assert list(prepared) == ["middle", "high"] and len(prepared["high"]) == 4


def test_pooled_accuracy_weights_subsets_by_size():
    metrics = {"test_middle_accuracy": 0.5, "test_middle_samples": 2, "test_high_accuracy": 0.75,
               "test_high_samples": 6}
    assert pooled_accuracy(metrics, "test", ["middle", "high"]) == {"test_accuracy": 0.6875, "test_samples": 8}
    assert pooled_accuracy({"test_middle_accuracy": 0.5, "test_middle_samples": 2}, "test", ["middle", "high"]) == {}


# ---- the Hub ids, offline ---------------------------------------------------------------------------------



@pytest.mark.parametrize("recipe_name", ["csqa", "winogrande", "race"])
def test_offline_hub_dataset_error_names_the_id_and_the_file_flags(hub_offline, tmp_path, recipe_name):
    recipe = load_recipe(recipe_name)
    name, config = recipe.args["dataset_name"], recipe.args.get("dataset_config_name")
    data_args = DataArguments(dataset_name=name, dataset_config_name=config)
    with pytest.raises(OSError) as err:
        load_raw_splits(data_args, ModelArguments(cache_dir=str(tmp_path)), recipe)
    message = str(err.value)
    assert f"dataset {name!r}" + (f" (config {config!r})" if config else " from the") in message
    assert "--train_file, --validation_file and --test_file" in message


@pytest.mark.parametrize(("recipe_name", "rows"), [("csqa", csqa_rows), ("winogrande", winogrande_rows)])
def test_hub_loading_asks_for_the_recipe_id_and_maps_the_splits(monkeypatch, tokenizer, train_args, recipe_name,
                                                                 rows):
    """The recipe's Hub id and config go to `datasets.load_dataset` once; train and validation (dev) are read,
    the unlabeled test split is not (the recipes have no test split)."""
    import smc_trainer.tasks.multiple_choice as mc

    calls = []

    def fake_load_dataset(name, config=None, cache_dir=None):
        calls.append((name, config))
        return DatasetDict({"train": Dataset.from_list(rows(6)), "validation": Dataset.from_list(rows(4, offset=2)),
                            "test": Dataset.from_list(rows(3))})

    monkeypatch.setattr(mc, "load_dataset", fake_load_dataset)
    config = parse_run_config(["--recipe", recipe_name, "--output_dir", "unused"])
    raw = load_raw_splits(config.data_args, config.model_args, config.recipe)
    assert calls == [(config.recipe.args["dataset_name"], config.recipe.args.get("dataset_config_name"))]
    assert (len(raw["train"]), len(raw["validation"]), raw["test"]) == (6, 4, None)
    data_args = DataArguments(max_seq_length=MAX_LEN)
    prepared = prepare_split(raw["validation"], "validation", tokenizer, data_args, train_args)
    assert len(prepared) == 4 and len(prepared[0]["input_ids"]) == (5 if recipe_name == "csqa" else 2)


def test_tokenized_splits_are_cached_and_overwrite_cache_recomputes(tmp_path, train_args):
    """`datasets.map` reuses its cache file for the same data and tokenizer (a new tokenizer object, as in a new
    process), and --overwrite_cache rewrites it."""
    data_args = DataArguments(train_file=write_jsonl(tmp_path / "train.jsonl", csqa_rows(6)), max_seq_length=MAX_LEN)

    def prepared_file(overwrite: bool = False) -> tuple[str, tuple[int, int]]:
        args = dataclasses.replace(data_args, overwrite_cache=overwrite)
        raw = load_raw_splits(args, ModelArguments(cache_dir=str(tmp_path / "cache")), load_recipe("csqa"))
        [cache] = prepare_split(raw["train"], "train", roberta_style_tokenizer(), args, train_args).cache_files
        stat = Path(cache["filename"]).stat()
        return cache["filename"], (stat.st_ino, stat.st_mtime_ns)

    first, written = prepared_file()
    assert prepared_file() == (first, written)  # loaded, not recomputed
    again, rewritten = prepared_file(overwrite=True)
    assert again == first and rewritten != written


def test_offline_hub_model_error_names_the_id_and_the_flag(hub_offline, tmp_path):
    args = ModelArguments(model_name_or_path=load_recipe("race").args["model_name_or_path"], cache_dir=str(tmp_path))
    with pytest.raises(OSError, match="(?s)could not load model 'FacebookAI/roberta-large'.*as --model_name_or_path"):
        load_model_and_tokenizer(args)


# ---- every recipe end to end: local files in the real schema, a tiny model, dense and one sparse method ---


def recipe_files(tmp_path: Path, recipe: str) -> list[str]:
    if recipe == "csqa":
        return ["--train_file", write_jsonl(tmp_path / "train.jsonl", csqa_rows(8)),
                "--validation_file", write_jsonl(tmp_path / "dev.jsonl", csqa_rows(5, offset=3))]
    if recipe == "winogrande":
        return ["--train_file", write_jsonl(tmp_path / "train.jsonl", winogrande_rows(8)),
                "--validation_file", write_csv(tmp_path / "dev.csv", winogrande_rows(6, offset=2))]
    return ["--train_file", write_jsonl(tmp_path / "train.jsonl", race_rows(4, "middle") + race_rows(4, "high")),
            "--validation_file", write_jsonl(tmp_path / "dev.jsonl", race_rows(2, "middle") + race_rows(3, "high")),
            "--test_file", write_jsonl(tmp_path / "test.jsonl", race_rows(3, "middle", 1) + race_rows(5, "high", 2))]


RUNS = [("csqa", "dense"), ("csqa", "omp_before"), ("winogrande", "dense"), ("winogrande", "gmp"),
        ("race", "dense"), ("race", "omp_before")]


def expected_inputs(recipe: str, path: Path) -> dict[str, list[tuple[list[str], list[str], int]]]:
    """Subset (or "" for the whole split) -> [(first segments, second segments, label)] of an evaluation file,
    written out independently of the pipeline from the paper's input formats."""
    if path.suffix == ".csv":
        with open(path, encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    else:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    out: dict[str, list] = {}
    for r in rows:
        if recipe == "csqa":
            texts = r["choices"]["text"]
            item = ([f"Q: {r['question']}"] * len(texts), [f"A: {t}" for t in texts], "ABCDE".index(r["answerKey"]))
            out.setdefault("", []).append(item)
        elif recipe == "winogrande":
            context, endings = winogrande_segments(r["sentence"], [r["option1"], r["option2"]])
            out.setdefault("", []).append(([context] * 2, endings, int(r["answer"]) - 1))
        else:
            item = ([r["article"]] * 4, [race_candidate(r["question"], o) for o in r["options"]],
                    "ABCD".index(r["answer"]))
            out.setdefault(race_subset(r["example_id"]), []).append(item)
    return out


def accuracy_of_saved_model(out_dir: str, questions: list[tuple[list[str], list[str], int]]) -> float:
    model = AutoModelForMultipleChoice.from_pretrained(out_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    correct = 0
    for firsts, seconds, label in questions:
        enc = tokenizer(firsts, seconds, truncation="only_first", max_length=MAX_LEN, padding=True,
                        return_tensors="pt")
        with torch.no_grad():
            logits = model(**{k: v.unsqueeze(0) for k, v in enc.items()}).logits[0]
        correct += int(np.argmax(logits.numpy()) == label)
    return correct / len(questions)


@pytest.mark.parametrize(("recipe", "method"), RUNS)
def test_recipe_runs_end_to_end_offline(tmp_path, model_dir, recipe, method):
    sparsity = "0" if method == "dense" else "0.5"
    files = recipe_files(tmp_path, recipe)
    config = parse_run_config([
        "--recipe", recipe, "--model_name_or_path", model_dir, *files,
        "--max_seq_length", str(MAX_LEN), "--max_steps", "2", "--warmup_steps", "0",
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--prune_frequency", "1",
        "--sparse_method", method, "--sparsity", sparsity, "--output_dir", str(tmp_path / "out"),
        "--dense_cache_dir", str(tmp_path / "cache"), "--cache_dir", str(tmp_path / "hf_cache"),
        "--report_to", "none", "--disable_tqdm", "true", "--log_level", "warning", "--use_cpu",
        "--save_strategy", "no",
    ])
    outcome = pipeline.run(config)[-1]
    metrics, out = outcome.metrics, config.training_args.output_dir  # dense: the cached run, linked to out
    assert outcome.steps == 2 and outcome.mask_sparsity == pytest.approx(float(sparsity), abs=1e-3)
    # the reported accuracy is the saved model's on exactly the reported split's (subset's) questions
    if recipe != "race":  # hidden test labels: the dev split is the reported one, and there is no test
        assert not [k for k in metrics if k.startswith("test_")]
        dev = expected_inputs(recipe, Path(files[files.index("--validation_file") + 1]))[""]
        assert metrics["eval_samples"] == len(dev)
        assert metrics["eval_accuracy"] == pytest.approx(accuracy_of_saved_model(out, dev))
        return
    test = expected_inputs(recipe, Path(files[files.index("--test_file") + 1]))
    assert {s: metrics[f"test_{s}_samples"] for s in test} == {"middle": 3, "high": 5}
    assert metrics["eval_middle_samples"] == 2 and metrics["eval_high_samples"] == 3
    for subset, questions in test.items():
        assert metrics[f"test_{subset}_accuracy"] == pytest.approx(accuracy_of_saved_model(out, questions))
    assert metrics["test_accuracy"] == pytest.approx(
        sum(metrics[f"test_{s}_accuracy"] * len(q) for s, q in test.items()) / 8)
