"""The second arithmetic model option: an encoder-decoder (here a tiny T5) writes the prefix equation as text,
with the problem's numbers written out, and is scored by the same answer accuracy as GTS."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from arithmetic_helpers import TEMPLATES, problem, tiny_tokenizer, write_csv, write_cv_data, write_cv_recipe
from transformers import EvalPrediction, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

from smc_trainer.runs import pipeline
from smc_trainer.runs.config import parse_run_config
from smc_trainer.tasks.arithmetic import build
from smc_trainer.tasks.arithmetic.seq2seq import (
    answer_accuracy,
    encode_batch,
    equation_value,
    make_compute_metrics,
    number_text,
    with_numbers,
)

OPERATORS = ["+", "-", "*", "/", "^"]


def seq2seq_tokenizer() -> PreTrainedTokenizerFast:
    """WordPiece over whitespace-split words: the templates' words, operators, and numbers spelled digit by digit
    (`139` -> `1 ##3 ##9`), so decoding gives every number back exactly; `</s>` ends each sequence (T5 style)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    words = {w for q, _ in TEMPLATES for w in q.split() if not w.startswith("number")}
    pieces = [*map(str, range(10)), *(f"##{d}" for d in range(10)), "##.", "."]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(["<pad>", "</s>", "<unk>", *OPERATORS, *pieces,
                                                       *sorted(words)]))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="<unk>", continuing_subword_prefix="##"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=64, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_input_names=["input_ids", "attention_mask"])


def write_t5(directory: Path, width: int = 32) -> str:
    tokenizer = seq2seq_tokenizer()
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=2 * width, num_layers=1,
                      num_decoder_layers=1,
                      num_heads=2, decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, dropout_rate=0.0)
    T5ForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq2seq")
    data = write_cv_data(root / "data", dev=(3, 5))
    return {"t5": write_t5(root / "t5"), "data": str(data), "recipe": write_cv_recipe(root / "cv_tiny.yaml")}


def flags(tiny, tmp_path, *extra: str) -> list[str]:
    return ["--recipe", tiny["recipe"], "--model_name_or_path", tiny["t5"], "--data_dir", tiny["data"],
            "--output_dir", str(tmp_path / "out"), "--dense_cache_dir", str(tmp_path / "cache"),
            "--cache_dir", str(tmp_path / "hf"), "--max_steps", "3", "--learning_rate", "1e-2",
            "--generation_max_length", "12", "--max_seq_length", "64", "--report_to", "none",
            "--disable_tqdm", "true", "--log_level", "warning", "--use_cpu", *extra]


# ---- numbers written out, equations read back ---------------------------------------------------------------


def test_numbers_are_written_exactly_and_equations_read_back():
    assert [number_text(x) for x in (8.0, 0.25, 139.0, 1 / 3, -2.0)] == ["8", "0.25", "139", repr(1 / 3), "-2"]
    assert with_numbers("tom has number0 apples and number1 pears", [8.0, 2.5]) == "tom has 8 apples and 2.5 pears"
    assert with_numbers("/ * number0 number1 100.0", [20.0, 3.0]) == "/ * 20 3 100.0"
    with pytest.raises(ValueError, match="names number2, but the problem has 2 numbers"):
        with_numbers("+ number0 number2", [1.0, 2.0])
    assert equation_value("- 8 2") == 6.0 and equation_value("* 3 + 1 2") == 9.0
    assert equation_value("/ * 20 3 100.0") == pytest.approx(0.6)
    for invalid in ("- 8", "8 2", "+ 8 two", "", "/ 1 0"):
        assert equation_value(invalid) is None, invalid


def test_answer_accuracy_counts_equivalent_equations_and_never_crashes_on_garbage():
    result = answer_accuracy(["+ 2 8", "- 8 2", "tom has", "* 3 3"], ["+ 8 2", "- 2 8", "+ 1 1", "* 3 3"])
    assert result == {"accuracy": 0.5, "correct": 2.0, "total": 4.0}
    assert answer_accuracy([], []) == {"accuracy": 0.0, "correct": 0.0, "total": 0.0}


def test_encoding_writes_numbers_out_in_source_and_target():
    tokenizer = seq2seq_tokenizer()
    row = problem(2)  # "a box holds number0 pens . how many pens are in number1 boxes ?", "* number0 number1"
    numbers = [float(x) for x in row["Numbers"].split()]
    out = encode_batch({k: [row[k]] for k in ("Question", "Numbers", "Equation")}, tokenizer, 64, "train")
    source = tokenizer.decode(out["input_ids"][0], skip_special_tokens=True)
    target = tokenizer.decode(out["labels"][0], skip_special_tokens=True)
    assert source == row["Question"].replace("number0", number_text(numbers[0])).replace("number1",
                                                                                          number_text(numbers[1]))
    assert target == f"* {number_text(numbers[0])} {number_text(numbers[1])}"
    assert out["labels"][0][-1] == tokenizer.eos_token_id


def test_a_tokenizer_that_cannot_write_the_numbers_is_refused():
    row = problem(1, offset=11)  # two-digit numbers: the word-level tokenizer spells them "1 3"
    with pytest.raises(ValueError, match=r"the tokenizer writes the equation '- \d+ \d+' back as"):
        encode_batch({k: [row[k]] for k in ("Question", "Numbers", "Equation")}, tiny_tokenizer(), 64, "train")


def test_a_perfect_system_scores_1_and_padding_is_ignored():
    tokenizer = seq2seq_tokenizer()
    rows = [problem(i) for i in range(5)]
    labels = encode_batch({k: [r[k] for r in rows] for k in ("Question", "Numbers", "Equation")}, tokenizer, 64,
                          "test")["labels"]
    width = max(map(len, labels))
    padded = np.array([ids + [-100] * (width - len(ids)) for ids in labels])
    generated = np.array([[tokenizer.pad_token_id, *ids] + [tokenizer.pad_token_id] * (width - len(ids))
                          for ids in labels])  # decoder start + equation + pad, as generate returns
    metrics = make_compute_metrics(tokenizer)(EvalPrediction(generated, padded))
    assert metrics == {"accuracy": 1.0, "correct": 5.0, "total": 5.0}
    swapped = generated.copy()
    swapped[0] = tokenizer.pad_token_id  # an empty generation is no equation
    assert make_compute_metrics(tokenizer)(EvalPrediction(swapped, padded))["correct"] == 4.0
    with pytest.raises(ValueError, match="--predict_with_generate true"):
        make_compute_metrics(tokenizer)(EvalPrediction(np.zeros((5, 3, 7)), padded))


# ---- the task end to end ---------------------------------------------------------------------------------


def test_encoder_decoder_without_generation_is_refused_before_any_weights_load(tiny, tmp_path, monkeypatch):
    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded before the flag check")

    monkeypatch.setattr(T5ForConditionalGeneration, "from_pretrained", no_weights)
    config = parse_run_config(flags(tiny, tmp_path, "--fold", "0"))
    with pytest.raises(ValueError, match=r"encoder-decoder \(t5\) model.*--predict_with_generate true"):
        build(config.model_args, config.data_args, config.training_args, config.recipe)


@pytest.mark.parametrize(("method", "sparsity"), [("dense", 0.0), ("omp_before", 0.5)])
def test_seq2seq_option_runs_cross_validated_dense_and_sparse(tiny, tmp_path, method, sparsity):
    config = parse_run_config(flags(tiny, tmp_path, "--predict_with_generate", "true", "--sparse_method", method,
                                    "--sparsity", str(sparsity)))
    [outcome] = pipeline.run(config)
    m = outcome.metrics
    assert m["test_total"] == 8 and m["test_correct"] == m["fold0/test_correct"] + m["fold1/test_correct"]
    assert m["test_accuracy"] == pytest.approx(m["test_correct"] / 8)
    assert outcome.mask_sparsity == pytest.approx(sparsity, abs=1e-3)
    assert outcome.measured_sparsity == pytest.approx(sparsity, abs=1e-3)
    saved = json.loads((tmp_path / "out" / "fold-0" / "config.json").read_text())
    assert saved["model_type"] == "t5"


def test_a_trained_seq2seq_model_solves_its_training_problems(tmp_path):
    """The pieces fit together: a tiny T5 trained on 4 problems (3 copies each) writes their equations (answer
    accuracy 1.0 on them), so tokenization, labels, generation and the metric agree."""
    t5 = write_t5(tmp_path / "t5", width=64)
    rows = [problem(i) for i in range(4)] * 3
    write_csv(tmp_path / "train.csv", rows)
    write_csv(tmp_path / "test.csv", rows[:4])
    config = parse_run_config([
        "--recipe", "svamp", "--model_name_or_path", t5, "--train_file", str(tmp_path / "train.csv"),
        "--test_file", str(tmp_path / "test.csv"), "--output_dir", str(tmp_path / "out"),
        "--dense_cache_dir", str(tmp_path / "cache"), "--cache_dir", str(tmp_path / "hf"),
        "--predict_with_generate", "true", "--generation_num_beams", "1", "--generation_max_length", "12",
        "--num_train_epochs", "60", "--per_device_train_batch_size", "4", "--learning_rate", "3e-2",
        "--weight_decay", "0", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
        "--log_level", "warning", "--use_cpu", "--seed", "0"])
    [outcome] = pipeline.run(config)
    assert outcome.metrics["test_total"] == 4
    assert outcome.metrics["test_accuracy"] == 1.0
