"""Arithmetic reasoning: the equation evaluator (on every row of the real data), the output vocabulary, the
CSV splits and folds, the GTS model (teacher forcing, beam search, save/load, prunable weights), the metric
and the fold pooling."""

from __future__ import annotations

import csv
import math
import random
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from arithmetic_helpers import (
    TINY_GTS_FLAGS,
    problem,
    tiny_encoder,
    tiny_tokenizer,
    write_csv,
    write_encoder,
    write_shipped_layouts,
)
from torch.nn.utils.rnn import pack_padded_sequence
from transformers import AutoModel, AutoTokenizer, EvalPrediction, TrainingArguments

from smc_trainer.engine.targets import find_targets
from smc_trainer.errors import UsageError
from smc_trainer.runs import pipeline
from smc_trainer.runs.config import parse_run_config
from smc_trainer.runs.folds import pool_metrics
from smc_trainer.runs.recipes import load_recipe
from smc_trainer.tasks.arithmetic import GTSForMathWordProblems, build
from smc_trainer.tasks.arithmetic.data import (
    ArithmeticCollator,
    encode_batch,
    load_raw_splits,
    placeholder_positions,
    prepare_split,
    split_paths,
)
from smc_trainer.tasks.arithmetic.equations import evaluate_prefix, is_correct, parse_numbers, tokenize
from smc_trainer.tasks.arithmetic.loading import load_model_and_tokenizer
from smc_trainer.tasks.arithmetic.metrics import make_compute_metrics, most_frequent_equation_accuracy
from smc_trainer.tasks.arithmetic.optim import gts_optimizers, update_steps_per_epoch
from smc_trainer.tasks.arithmetic.vocab import EquationVocab
from smc_trainer.tasks.quickstart import quickstart_model_path
from smc_trainer.training.arguments import DataArguments, ModelArguments

# ---- equations -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("equation", "numbers", "value"), [
    ("- number0 number1", [8.0, 2.0], 6.0),  # prefix order: the first operand is the left one
    ("/ number1 number0", [4.0, 10.0], 2.5),
    ("* number0 + number1 number2", [8.0, 4.0, 6.0], 80.0),
    ("- + number0 number2 number1", [3.0, 1.0, 5.0], 7.0),
    ("* / - number1 number0 number0 100.0", [50.0, 75.0], 50.0),
    ("^ number0 2.0", [3.0], 9.0),
    ("+ 3.14 1", [], 4.14),
    ("number2", [1.0, 2.0, 3.0], 3.0),
])
def test_prefix_equations_evaluate(equation, numbers, value):
    assert evaluate_prefix(tokenize(equation), numbers) == pytest.approx(value, abs=1e-12)


@pytest.mark.parametrize("equation", [
    "+ number0", "number0 number1", "+ number0 number1 number0", "", "x", "+ number0 nan", "* inf number0",
    "number3", "/ number0 0.0", "/ number0 - number1 number1", "^ 10.0 1000.0", "^ - 0.0 8.0 0.5",
    "^ 0.0 - 0.0 1.0", "* 1e308 1e308", "+ number0 number-1",
])
def test_invalid_equations_are_none_and_never_raise(equation):
    assert evaluate_prefix(tokenize(equation), [2.0, 3.0]) is None
    assert not is_correct(None, 5.0)


def test_answer_tolerance():
    assert is_correct(5.00009, 5.0) and not is_correct(5.00011, 5.0) and not is_correct(5.0, math.nan)


# Rows of the shared data whose Answer column is not the value of their gold equation, found by the
# test below and checked by hand (the same 15 problems recur across folds and files: 90 rows).
ROUNDED = "the Answer is the gold equation's value rounded in the data"
WRONG_ANSWER = "the gold equation is right; the Answer column is wrong"
WRONG_EQUATION = "the Answer is right; the gold equation is wrong"
KNOWN_MISMATCHES = {
    ("johnny practiced for the track team", "3 10"): ROUNDED,  # 10/3 = 3.3333 written 3.333
    ("Soft drinks are on sale at the grocery", "2.99 12.0"): ROUNDED,  # 0.2492 -> 0.25
    ("In one year , for the election for pre", "76.7 129.9"): ROUNDED,  # 69.361 -> 69.4
    ("I need to figure out how to get the am", "16.0 0.4698 0.374 17.0"): ROUNDED,  # 6.4538 -> 6.45
    ("It took me number0 minutes to walk num", "6.0 500.0"): ROUNDED,  # 83.333 -> 83.33
    ("If number0 of a pound is worth number1", "0.6667 8.0 0.75"): ROUNDED,  # 8.99955 -> 9.0
    ("A furniture store has a chair , origin", "78.0 46.0"): ROUNDED,  # 41.026 -> 41.0
    ("A recipe calls for number0 cups of sug", "2.0 0.3333"): WRONG_ANSWER,  # 0.16665 written 0.165
    ("One stamp costs number0 cents . If the", "34.0 4.0"): WRONG_ANSWER,  # 34 * 4 = 136, not 134
    ("James has number0 balloons . Amy has n", "1222.0 513.0"): WRONG_ANSWER,  # 709, not 208
    ("Mrs. Hilt has number0 markers . They a", "40.0 7.0"): WRONG_ANSWER,  # 40 / 7 = 5.714, not 5
    ("On a recent trip to CA , we averaged n", "50.0 60.0"): WRONG_EQUATION,  # harmonic mean 54.545, not 55
    ("On Saturday , Sara spent $ number0 eac", "10.62 2.0 1.59 13.95"): WRONG_EQUATION,  # forgets number3
    ("Mrs. Hilt bought a notebook for $ numb", "1.3"): WRONG_EQUATION,  # 1.3 / 0.05 = 26, not 1.3 / 5.0
    ("There was a stack of number0 sheets of", "700.0 100.0"): WRONG_EQUATION,  # 700 / 100 = 7, not 700 / 7
}


def test_trivial_baseline_scores_the_most_frequent_training_equation_by_its_answers():
    train = [{"Equation": "+ number0 number1", "Numbers": "1 2"}, {"Equation": "- number0 number1", "Numbers": "5 3"},
             {"Equation": "+ number0 number1", "Numbers": "4 4"}]
    test = [{"Equation": "+ number1 number0", "Numbers": "2 7"},  # the same answer, another equation: right
            {"Equation": "* number0 number1", "Numbers": "2 2"},  # 2 + 2 = 2 * 2: right by its answer
            {"Equation": "- number0 number1", "Numbers": "9 1"},  # 10 against 8: wrong
            {"Equation": "number0", "Numbers": "3"}]  # number1 is missing: the baseline's equation is invalid
    assert most_frequent_equation_accuracy(train, test) == 0.5
    with pytest.raises(UsageError, match="needs training rows"):
        most_frequent_equation_accuracy([], test)


def test_gold_equation_gives_the_answer_on_every_shared_row(shared_data):
    """Every gold equation of every CSV is valid; it equals the Answer column within 1e-4 on every row except
    the 15 known problems above, where the data's Answer is rounded or wrong or its equation is wrong. The
    metric scores against the gold equation's value (as the SVAMP / SMC-Bench code), so rounding never
    costs a correct prediction; the 4 wrong equations are what a model is taught (documented in the README)."""
    files = sorted((shared_data / "arithmetic").rglob("*.csv"))
    assert len(files) == 22
    rows = mismatched = 0
    found = set()
    for path in files:
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                rows += 1
                value = evaluate_prefix(tokenize(row["Equation"]), parse_numbers(row["Numbers"]))
                assert value is not None, f"{path}: invalid gold equation {row['Equation']!r}"
                answer = float(row["Answer"])
                if is_correct(value, answer):
                    continue
                mismatched += 1
                key = next((k for k in KNOWN_MISMATCHES if row["Question"].startswith(k[0]) and row["Numbers"] == k[1]),
                           None)
                assert key is not None, f"{path}: {row['Equation']} = {value}, Answer {answer}: {row['Question']}"
                found.add(key)
                if KNOWN_MISMATCHES[key] == ROUNDED:
                    digits = len(row["Answer"].split(".")[1]) if "." in row["Answer"] else 0
                    assert round(value, digits) == answer, (key, value, answer)
    assert rows == 19828 and mismatched == 90
    assert found == set(KNOWN_MISMATCHES), "a known mismatch disappeared: update the list and the README"


# ---- vocabulary --------------------------------------------------------------------------------------


def test_vocabulary_is_deterministic_and_round_trips():
    equations = [tokenize(e) for e in ["* number0 100.0", "- number1 number0", "+ number0 1", "/ number0 0.5",
                                       "* number2 1.0"]]
    vocab = EquationVocab.from_equations(equations, max_numbers=3)
    assert vocab.operators == ("+", "-", "*", "/") and vocab.constants == ("0.5", "1.0", "100.0")  # 1 and 1.0 merge
    assert vocab.number_start == 7 and vocab.size == 10
    for _ in range(5):
        random.shuffle(equations)
        assert EquationVocab.from_equations(equations, 3) == vocab
    tokens = tokenize("* + number0 1.00 / number2 100")
    ids = vocab.encode(tokens)
    assert ids == [2, 0, 7, 5, 3, 9, 6]
    assert vocab.decode([*ids, -100, -100]) == ["*", "+", "number0", "1.0", "/", "number2", "100.0"]
    assert vocab.encode(tokenize("+ number0 3.14")) is None and vocab.encode(tokenize("+ number3 1.0")) is None
    assert vocab.encode(tokenize("^ number0 2.0")) is None
    with pytest.raises(ValueError, match="not a numeric constant"):
        EquationVocab.from_equations([["+", "number0", "x"]], 2)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        vocab.decode([10])


# ---- data ----------------------------------------------------------------------------------------------


def test_split_paths_follow_the_recipe_and_the_fold():
    mawps, svamp = load_recipe("mawps"), load_recipe("svamp")
    assert split_paths(mawps, DataArguments(fold=3)) == {
        "train": "cv_mawps/fold3/train.csv", "validation": None, "test": "cv_mawps/fold3/dev.csv"}
    assert split_paths(svamp, DataArguments())["test"] == "mawps-asdiv-a_svamp/dev.csv"
    assert split_paths(mawps, DataArguments(fold=0, train_file="/x/t.csv"))["train"] == "/x/t.csv"
    with pytest.raises(ValueError, match="cross-validated over 5 folds: pass --fold K"):
        split_paths(mawps, DataArguments())
    with pytest.raises(ValueError, match=r"--fold must be in 0..4 for recipe 'mawps'; got 5"):
        split_paths(mawps, DataArguments(fold=5))
    with pytest.raises(ValueError, match="--fold is only for cross-validated recipes; recipe 'svamp'"):
        split_paths(svamp, DataArguments(fold=0))


@pytest.mark.parametrize(("recipe", "fold", "sizes"), [
    ("mawps", 0, (1537, 384)), ("asdiv_a", 4, (951, 266)), ("svamp", None, (3138, 1000))])
def test_real_splits_load_from_data_dir(shared_data, tmp_path, recipe, fold, sizes):
    data_args = DataArguments(data_dir=str(shared_data / "arithmetic"), fold=fold)
    raw = load_raw_splits(data_args, ModelArguments(cache_dir=str(tmp_path)), load_recipe(recipe))
    assert raw["validation"] is None and (len(raw["train"]), len(raw["test"])) == sizes
    assert raw["train"].column_names == ["Question", "Numbers", "Equation"]
    assert all(isinstance(x, str) for x in raw["test"][:20]["Numbers"])  # never parsed as one float


def test_placeholder_positions_point_at_the_first_subword():
    tokenizer = AutoTokenizer.from_pretrained(quickstart_model_path())  # MiniLM's WordPiece: number ##0
    questions = ["Mary has number0 cups . she puts number1 in , then number0 again ; number2 left ?",
                 "a long question " * 30 + "with number0 at the end"]
    encoding = tokenizer(questions, truncation=True, max_length=32)
    positions = placeholder_positions(questions[0], encoding, 0, 3)
    tokens = encoding.tokens(0)
    assert [tokens[p] for p in positions] == ["number"] * 3
    assert [tokens[p + 1] for p in positions] == ["##0", "##1", "##2"]
    assert positions[0] < positions[1] < positions[2]  # the first occurrence of number0
    assert placeholder_positions(questions[1], encoding, 1, 1) == [-1]  # truncated away


def test_encoding_and_collation(tmp_path):
    tokenizer = tiny_tokenizer()
    rows = [problem(i) for i in range(7)] + [dict(problem(5), Equation="+ number0 3.5")]
    raw = datasets.Dataset.from_list([{k: r[k] for k in ("Question", "Numbers", "Equation")} for r in rows])
    vocab = EquationVocab.from_equations([tokenize(r["Equation"]) for r in rows[:7]], max_numbers=4)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    encoded = prepare_split(raw, "test", tokenizer, vocab, DataArguments(), args)
    assert encoded[7]["labels"] == []  # 3.5 is unseen in training: no teacher-forced loss, still scored
    batch = ArithmeticCollator(tokenizer, max_numbers=4)([encoded[i] for i in (4, 0, 7)])
    assert batch["number_positions"].shape == (3, 4) and batch["number_positions"][1, 2:].tolist() == [-1, -1]
    ids = batch["input_ids"]
    for row, positions in enumerate(batch["number_positions"].tolist()):
        for k, p in enumerate(positions):
            if p >= 0:
                assert tokenizer.convert_ids_to_tokens([int(ids[row, p]), int(ids[row, p + 1])]) == ["number", str(k)]
    assert batch["labels"].tolist()[1] == [0, vocab.number_start, vocab.number_start + 1, -100, -100]
    assert batch["labels"].tolist()[2] == [-100] * 5
    assert batch["label_numbers"].dtype == torch.float64 and math.isnan(batch["label_numbers"][1, 2])
    assert batch["label_answers"].tolist() == [evaluate_prefix(tokenize(rows[i]["Equation"]),
                                                               parse_numbers(rows[i]["Numbers"])) for i in (4, 0, 7)]
    bad = datasets.Dataset.from_list([{"Question": "q number0", "Numbers": "1.0", "Equation": "+ number0"}])
    with pytest.raises(ValueError, match="gold equation '\\+ number0' is invalid"):
        prepare_split(bad, "train", tokenizer, vocab, DataArguments(), args)


# ---- the GTS model --------------------------------------------------------------------------------------


def tiny_gts(seed: int = 0, dropout: float = 0.0, constants=("100.0",), beam_size: int = 5,
             hidden: int = 16) -> GTSForMathWordProblems:
    encoder = tiny_encoder(len(tiny_tokenizer()), seed, hidden)
    torch.manual_seed(seed)
    return GTSForMathWordProblems.from_encoder(encoder, hidden_size=hidden, dropout=dropout,
                                               operators=["+", "-", "*", "/"], constants=list(constants),
                                               max_numbers=3, beam_size=beam_size)


def tiny_batch(rows: list[dict], model: GTSForMathWordProblems) -> dict[str, torch.Tensor]:
    tokenizer = tiny_tokenizer()
    vocab = model.config.vocab
    raw = datasets.Dataset.from_list([{k: r[k] for k in ("Question", "Numbers", "Equation")} for r in rows])
    encoded = raw.map(encode_batch, batched=True, remove_columns=raw.column_names,
                      fn_kwargs={"tokenizer": tokenizer, "vocab": vocab, "max_length": 64, "split": "train"})
    return ArithmeticCollator(tokenizer, vocab.max_numbers)([encoded[i] for i in range(len(encoded))])


def model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in ("label_numbers", "label_answers")}


def test_forward_shapes_loss_and_gradients():
    model = tiny_gts(dropout=0.5).train()
    batch = tiny_batch([problem(i) for i in range(7)], model)
    out = model(**batch)
    assert out.predictions is None and out.loss.ndim == 0 and out.loss > 0
    out.loss.backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()}
    assert no_grad <= {"encoder.pooler.dense.weight", "encoder.pooler.dense.bias"}  # GTS reads the states
    model.eval()
    with torch.no_grad():
        out = model(**batch)
    assert out.loss is not None and out.predictions.dtype == torch.long and out.predictions.shape[0] == 7
    valid = out.predictions[out.predictions >= 0]
    assert bool((valid < model.config.vocab.size).all())


@pytest.mark.parametrize("encoder_dropout", [0.0, 0.5])
def test_the_bilstm_reads_the_encoder_states_without_dropout_unless_asked(encoder_dropout):
    """As the official GTS (`train_tree` passes the RoBERTa output straight into `EncoderSeq`), dropout 0.5 acts
    between the BiLSTM layers and in the decoder, not on the encoder states; `encoder_dropout` brings it back."""
    torch.manual_seed(0)
    model = GTSForMathWordProblems.from_encoder(tiny_encoder(len(tiny_tokenizer())), hidden_size=16, dropout=0.5,
                                                encoder_dropout=encoder_dropout, operators=["+", "-", "*", "/"],
                                                constants=["100.0"], max_numbers=3).train()
    model.encoder.eval()  # the encoder's own dropout off: only what sits between it and the BiLSTM is tested
    seen = {}
    model.encoder.register_forward_hook(lambda m, args, out: seen.update(states=out.last_hidden_state))
    model.lstm.register_forward_pre_hook(lambda m, args: seen.update(lstm_input=args[0]))
    batch = tiny_batch([problem(i) for i in range(7)], model)
    model(**model_inputs(batch))
    lengths = batch["attention_mask"].sum(dim=1)
    expected = pack_padded_sequence(seen["states"], lengths, batch_first=True, enforce_sorted=False).data
    assert torch.equal(seen["lstm_input"].data, expected) == (encoder_dropout == 0.0)


def test_teacher_forcing_is_batch_independent():
    """The batched tree construction gives every problem exactly the log-likelihood it has alone."""
    model = tiny_gts().eval()
    rows = [problem(i) for i in range(7)]
    batch = tiny_batch(rows, model)
    decoder = model.tree_decoder
    with torch.no_grad():
        problems = model.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                batch["number_positions"])
        log_probs, scored = decoder.token_log_probs(problems, batch["labels"])
        assert scored.tolist() == (batch["labels"] >= 0).tolist()
        for i in range(len(rows)):
            single = tiny_batch([rows[i]], model)
            alone = model(**model_inputs(single)).loss * (single["labels"] >= 0).sum()
            assert float(-log_probs[i].sum()) == pytest.approx(float(alone), rel=1e-5)


def test_beam_search_returns_its_best_tree_with_its_exact_score():
    """The beam's score is the teacher-forced log-likelihood of the tree it returns; a wider beam never does
    worse; batching does not change the result; forward in eval mode returns the same equations."""
    model = tiny_gts(seed=3).eval()
    batch = tiny_batch([problem(i) for i in range(7)], model)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids", "number_positions")}
    ids, scores = model.decode_equations(**inputs, max_length=12)
    narrow_ids, narrow_scores = model.decode_equations(**inputs, beam_size=1, max_length=12)
    assert bool((scores >= narrow_scores - 1e-5).all())
    model.config.max_decode_length = 12
    with torch.no_grad():
        assert torch.equal(model(**model_inputs(batch)).predictions, ids)
        for i in range(7):
            one = {k: v[i: i + 1] for k, v in inputs.items()}
            alone_ids, alone_score = model.decode_equations(**one, max_length=12)
            assert alone_ids[0].tolist() == ids[i, : alone_ids.shape[1]].tolist()
            labels = ids[i: i + 1, : int((ids[i] >= 0).sum())]
            likelihood = -model(**one, labels=labels).loss * labels.shape[1]
            assert float(likelihood) == pytest.approx(float(scores[i]), abs=1e-4)


def test_decoding_never_uses_a_number_the_problem_lacks():
    model = tiny_gts(seed=1).eval()
    rows = [problem(i) for i in range(7)]
    batch = tiny_batch(rows, model)
    positions = batch["number_positions"].clone()
    positions[:, 1:] = -1  # every problem keeps number0 only
    ids, _ = model.decode_equations(batch["input_ids"], positions, batch["attention_mask"], max_length=10)
    start = model.config.vocab.number_start
    assert bool((ids < start + 1).all()), "a masked number slot was emitted"


def test_gts_learns_to_solve_its_training_problems():
    """Teacher forcing and beam search agree: after fitting 7 problem types (incl. nested trees, whose left
    subtree embeddings come from the merge network) the beam decodes every training equation exactly."""
    model = tiny_gts(seed=0, hidden=64)
    rows = [problem(i) for i in range(7)]
    batch = tiny_batch(rows, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        optimizer.zero_grad()
        loss = model(**model_inputs(batch)).loss
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        predictions = model(**batch).predictions
    decoded = [model.config.vocab.decode(p) for p in predictions.tolist()]
    assert decoded == [tokenize(r["Equation"]) for r in rows], f"training loss {loss.item():.4f}"
    metrics = make_compute_metrics(model.config.vocab)(EvalPrediction(
        predictions=predictions.numpy(), label_ids=(batch["labels"].numpy(), batch["label_numbers"].numpy(),
                                                     batch["label_answers"].numpy())))
    assert metrics == {"accuracy": 1.0, "correct": 7.0, "total": 7.0}


def test_save_and_load_round_trip(tmp_path):
    model = tiny_gts(seed=2, constants=("0.5", "100.0")).eval()
    batch = tiny_batch([problem(i) for i in range(7)], model)
    model.save_pretrained(tmp_path / "gts")
    loaded = AutoModel.from_pretrained(tmp_path / "gts").eval()  # registered with the Auto classes
    assert type(loaded) is GTSForMathWordProblems and loaded.config.constants == ["0.5", "100.0"]
    assert loaded.config.vocab == model.config.vocab
    state, reloaded = model.state_dict(), loaded.state_dict()
    assert state.keys() == reloaded.keys() and all(torch.equal(state[k], reloaded[k]) for k in state)
    with torch.no_grad():
        assert torch.equal(model(**batch).predictions, loaded(**batch).predictions)


def test_pretrained_encoder_weights_survive_the_new_decoder(tmp_path):
    tiny_encoder(len(tiny_tokenizer()), seed=7).save_pretrained(tmp_path / "enc")
    pretrained = AutoModel.from_pretrained(tmp_path / "enc")
    expected = {k: v.clone() for k, v in pretrained.state_dict().items()}
    model = GTSForMathWordProblems.from_encoder(pretrained, hidden_size=8, operators=["+"], max_numbers=2)
    assert all(torch.equal(model.encoder.state_dict()[k], v) for k, v in expected.items())


OFFICIAL_DENSE = {"encoder.pooler.dense.weight", "merge.merge.weight", "merge.merge_g.weight",
                  "prediction.constant_embeddings.weight"}


def test_the_official_2d_weights_are_prunable_and_sensibly_grouped():
    """The official GTS masks every 2-D weight of the encoder (embeddings included), the BiLSTM and the decoder,
    except the pooler (GTS never reads it) and the merge network (left out by its SNIP, GMP and RigL runs) and the
    constant embeddings (a 3-D parameter there, never masked)."""
    model = tiny_gts()
    targets = {t.name: t.group for t in find_targets(model)}
    assert set(targets) == {n for n, p in model.named_parameters() if p.dim() == 2} - OFFICIAL_DENSE
    assert targets["encoder.embeddings.word_embeddings.weight"] == "embeddings"
    assert targets["encoder.encoder.layer.0.attention.self.query.weight"] == "layer_00"
    assert targets["generation.operator_embeddings.weight"] == "embeddings"
    for name in ("lstm.weight_ih_l0", "lstm.weight_hh_l1_reverse", "prediction.ops.weight",
                 "generation.generate_rg.weight", "prediction.leaf_score.attn.weight"):
        assert targets[name] == "head"
    assert not any(n.startswith("lstm.bias") for n in targets)
    without_heads = {t.name for t in find_targets(model, prune_heads=False)}
    assert {n for n in without_heads if not n.startswith("encoder.")} == {
        "generation.operator_embeddings.weight"}  # still an embedding
    assert OFFICIAL_DENSE.isdisjoint(t.name for t in find_targets(model, exclude="pooler"))  # a regex still finds it


# ---- optimization -----------------------------------------------------------------------------------------


def test_two_learning_rates_and_step_lr_in_epochs(tmp_path):
    model = tiny_gts()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2,
                             learning_rate=1e-3, weight_decay=1e-5, report_to="none", use_cpu=True)
    assert update_steps_per_epoch(33, args) == 5  # 9 batches of 4 -> 5 optimizer steps
    assert update_steps_per_epoch(32, args) == 4
    optimizer, scheduler = gts_optimizers(model, args, 8e-6, step_epochs=2, gamma=0.5, num_train_examples=33)
    assert len(optimizer.param_groups) == 2  # no adapters: no adapter group
    encoder_group, decoder_group = optimizer.param_groups
    assert encoder_group["lr"] == 8e-6 and decoder_group["lr"] == 1e-3
    assert {id(p) for p in encoder_group["params"]} == {id(p) for p in model.encoder.parameters()}
    assert len(encoder_group["params"]) + len(decoder_group["params"]) == len(list(model.parameters()))
    assert optimizer.defaults["weight_decay"] == 1e-5 and isinstance(optimizer, torch.optim.Adam)
    lrs = []
    for _ in range(21):
        lrs.append(scheduler.get_last_lr()[1])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == lrs[9] == 1e-3 and lrs[10] == lrs[19] == 5e-4 and lrs[20] == 2.5e-4  # every 2 epochs


def test_lora_adapters_are_in_the_optimizer_the_trainer_builds(tmp_path):
    """GTS's optimizer is built on the model the Trainer trains: with --peft lora, the adapters (at
    --lora_learning_rate) and the copied GTS head train, the frozen encoder weights are not in it."""
    from smc_trainer import SparseTrainer, SparseTrainingArguments
    from smc_trainer.tasks.arithmetic.optim import gts_trainer_kwargs

    model = tiny_gts()
    args = SparseTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=1e-3,
                                   report_to="none", use_cpu=True, peft="lora", lora_learning_rate=5e-3,
                                   sparse_method="omp_before", sparsity=0.5, max_steps=1)
    kwargs = gts_trainer_kwargs(args, 8e-6, step_epochs=2, gamma=0.5, num_train_examples=33)
    trainer = SparseTrainer(model=model, args=args, **kwargs)
    trainer.create_optimizer_and_scheduler(10)
    in_optimizer = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    named = dict(trainer.model.named_parameters())
    adapters = [p for n, p in named.items() if "lora_" in n]
    assert adapters and all(in_optimizer.get(id(p)) == 5e-3 for p in adapters)
    trainable = [p for p in named.values() if p.requires_grad]
    assert set(in_optimizer) == {id(p) for p in trainable}, "exactly the trainable parameters"
    assert not any(id(p) in in_optimizer for n, p in named.items() if "encoder" in n and "lora_" not in n
                   and not p.requires_grad)
    head = [p for n, p in named.items() if "modules_to_save" in n]
    assert head and all(in_optimizer.get(id(p)) == 1e-3 for p in head)
    assert isinstance(trainer.lr_scheduler, torch.optim.lr_scheduler.StepLR)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A tiny encoder checkpoint and tiny data in the shipped recipes' layout."""
    root = tmp_path_factory.mktemp("shipped")
    return {"encoder": write_encoder(root / "encoder"), "data": str(write_shipped_layouts(root / "data"))}


def shipped_flags(shipped, tmp_path, recipe: str, *extra: str) -> list[str]:
    fold = ["--fold", "0"] if load_recipe(recipe).folds else []
    return ["--recipe", recipe, "--model_name_or_path", shipped["encoder"], "--data_dir", shipped["data"], *fold,
            "--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "hf"), "--report_to", "none",
            "--use_cpu", *extra]


@pytest.mark.parametrize(("recipe", "batch"), [("mawps", 4), ("asdiv_a", 4), ("svamp", 8)])
def test_recipes_build_the_papers_gts_optimizer_schedule_and_beam(shipped, tmp_path, recipe, batch):
    """The recipes' paper settings (Table 4, the SVAMP code) reach the built task unchanged: GTS hidden 512,
    2 layers, dropout 0.5, beam 5; Adam (0.9, 0.999), eps 1e-8, wd 1e-5 with the encoder at 8e-6 and the rest
    at 1e-3; StepLR x 0.5 every 20 epochs; 50 epochs at batch 4 (MAWPS, ASDiv-A) or 8 (SVAMP); no clipping."""
    config = parse_run_config(shipped_flags(shipped, tmp_path, recipe, "--max_seq_length", "64"))
    args = config.training_args
    assert (args.num_train_epochs, args.per_device_train_batch_size, args.max_grad_norm) == (50, batch, 0.0)
    bundle = pipeline.build_task(config)
    gts = bundle.model.config
    assert (gts.hidden_size, gts.num_layers, gts.dropout, gts.beam_size) == (512, 2, 0.5, 5)
    assert gts.encoder_dropout == 0.0  # the official train_tree feeds the RoBERTa states straight to the BiLSTM
    factory, optimizer_kwargs = bundle.trainer_kwargs["optimizer_cls_and_kwargs"]
    optimizer = factory()(bundle.model, **optimizer_kwargs)  # as the Trainer builds it, on the model it trains
    scheduler = bundle.trainer_kwargs["lr_scheduler_factory"](optimizer, 1000)
    assert isinstance(optimizer, torch.optim.Adam)
    encoder_group, decoder_group = optimizer.param_groups
    assert {id(p) for p in encoder_group["params"]} == {id(p) for p in bundle.model.encoder.parameters()}
    assert (encoder_group["lr"], decoder_group["lr"]) == (8e-6, 1e-3)
    for group in (encoder_group, decoder_group):
        assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.9, 0.999), 1e-8, 1e-5)
    steps_per_epoch = math.ceil(len(bundle.train_dataset) / batch)
    assert (scheduler.step_size, scheduler.gamma) == (20 * steps_per_epoch, 0.5)


@pytest.mark.parametrize(("recipe", "method", "model"), [
    ("mawps", "omp_after", "gts"), ("asdiv_a", "dense", "gts"), ("svamp", "dense", "gts"),
    ("mawps", "omp_after", "graph2tree"), ("svamp", "snip", "graph2tree")])
def test_shipped_recipes_also_run_the_other_of_dense_and_sparse(shipped, tmp_path, recipe, method, model):
    """With tests/tasks/test_arithmetic_pipeline.py (mawps dense, asdiv_a gmp, svamp snip), every arithmetic recipe runs
    end to end offline both dense and sparse, and reports its pooled-ready answer accuracy on the test split; so
    does Graph2Tree (after and before methods)."""
    sparsity = 0.0 if method == "dense" else 0.5
    config = parse_run_config(shipped_flags(
        shipped, tmp_path, recipe, "--sparse_method", method, "--sparsity", str(sparsity), "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--generation_max_length", "8",
        "--dense_cache_dir", str(tmp_path / "cache"), "--save_strategy", "no", *TINY_GTS_FLAGS,
        "--arithmetic_model", model, "--graph2tree_hidden_size", "16"))
    [outcome] = pipeline.run(config)
    m = outcome.metrics
    assert m["test_total"] == (6 if recipe == "svamp" else 4) and "eval_accuracy" not in m
    assert m["test_accuracy"] == pytest.approx(m["test_correct"] / m["test_total"])
    assert outcome.mask_sparsity == pytest.approx(sparsity, abs=1e-3)
    assert outcome.measured_sparsity == pytest.approx(sparsity, abs=1e-3)


def test_gts_trains_with_lora_and_merges_with_exact_zeros(shipped, tmp_path):
    """GTS + --peft lora end to end: the adapters and the whole GTS head (the merge network included, whose
    inner `merge` linear peft's suffix matching of modules_to_save would otherwise leave frozen) train, and the
    merged release keeps every pruned weight at zero."""
    from transformers import AutoModel

    config = parse_run_config(shipped_flags(
        shipped, tmp_path, "asdiv_a", "--sparse_method", "omp_before", "--sparsity", "0.5", "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--generation_max_length", "8",
        "--save_strategy", "no", "--peft", "lora", "--lora_r", "2", "--lora_learning_rate", "1e-2",
        *TINY_GTS_FLAGS))
    bundle = pipeline.build_task(config)
    before = {n: p.detach().clone() for n, p in bundle.model.named_parameters()}
    [outcome] = pipeline.run(config)
    assert outcome.measured_sparsity == pytest.approx(0.5, abs=1e-3)
    merged = AutoModel.from_pretrained(str(tmp_path / "out"))
    after = dict(merged.named_parameters())
    assert set(after) == set(before), "the merged release is the plain GTS model"
    head = [n for n in before if not n.startswith("encoder.")]
    moved = [n for n in head if not torch.equal(after[n], before[n])]
    assert "merge.merge.weight" in moved and "merge.merge_g.weight" in moved, "the whole GTS head trains"
    from safetensors.torch import load_file

    from smc_trainer.engine.masks import MASKS_NAME

    masks = load_file(str(tmp_path / "out" / MASKS_NAME))
    assert masks and all(int(torch.count_nonzero(after[n].detach()[~m])) == 0 for n, m in masks.items())


# ---- the metric and fold pooling --------------------------------------------------------------------------


def test_answer_accuracy_scores_values_not_strings():
    vocab = EquationVocab(("+", "-", "*", "/"), ("100.0",), 3)
    predictions = np.array([vocab.encode(tokenize(e)) + [-100] * (5 - len(tokenize(e))) for e in [
        "+ number1 number0",  # commutative: same value as the gold "+ number0 number1"
        "- number0 number1",  # wrong value
        "/ number0 - number1 number1",  # division by zero: wrong, no error
        "+ number0 + number0 number0",  # 3 x 2.0 = 6.0
        "* number0 100.0",
    ]] + [[0, 0, 0, 0, 0]])  # an unfinished tree: wrong
    numbers = np.array([[1.0, 2.0, np.nan], [1.0, 2.0, np.nan], [4.0, 3.0, np.nan], [2.0, np.nan, np.nan],
                        [0.3, np.nan, np.nan], [1.0, np.nan, np.nan]])
    answers = np.array([3.0, 3.0, 1.0, 6.0, 30.0, 1.0])
    metrics = make_compute_metrics(vocab)(EvalPrediction(predictions, (predictions, numbers, answers)))
    assert metrics == {"accuracy": 3 / 6, "correct": 3.0, "total": 6.0}
    with pytest.raises(ValueError, match="label_names"):
        make_compute_metrics(vocab)(EvalPrediction(predictions, predictions))


def test_folds_pool_total_correct_over_total_problems():
    folds = [{"test_accuracy": 0.9, "test_correct": 9.0, "test_total": 10.0, "test_loss": 1.0, "test_samples": 10},
             {"test_accuracy": 1 / 30, "test_correct": 1.0, "test_total": 30.0, "test_loss": 3.0, "test_samples": 30,
              "only_here": 1.0}]
    pooled = pool_metrics(folds, folds=[0, 1])
    assert pooled["test_accuracy"] == 10 / 40 != (0.9 + 1 / 30) / 2  # not the mean of fold accuracies
    assert pooled["test_correct"] == 10 and pooled["test_total"] == 40 and pooled["test_samples"] == 40
    assert pooled["test_loss"] == 2.0 and "only_here" not in pooled
    assert pooled["fold1/test_accuracy"] == 1 / 30 and pooled["fold0/test_correct"] == 9


# ---- errors before anything heavy ----------------------------------------------------------------------------



def test_offline_hub_model_error_names_the_id_and_the_local_flags(hub_offline, tmp_path):
    raw = {"train": datasets.Dataset.from_list([{k: problem(0)[k] for k in ("Question", "Numbers", "Equation")}]),
           "validation": None, "test": None}
    model_args = ModelArguments(model_name_or_path=load_recipe("svamp").args["model_name_or_path"],
                                cache_dir=str(tmp_path))
    with pytest.raises(OSError, match="(?s)could not load model 'roberta-base'.*--model_name_or_path.*--data_dir"):
        load_model_and_tokenizer(model_args, DataArguments(), SimpleNamespace(), raw)


def test_offline_hub_dataset_error_names_the_id_and_data_dir(hub_offline, tmp_path):
    data_args = DataArguments(dataset_name="someone/svamp-data")
    with pytest.raises(OSError, match="(?s)dataset 'someone/svamp-data'.*--data_dir"):
        load_raw_splits(data_args, ModelArguments(cache_dir=str(tmp_path)), load_recipe("svamp"))
    with pytest.raises(ValueError, match="no data: pass --data_dir"):
        load_raw_splits(DataArguments(), ModelArguments(cache_dir=str(tmp_path)), load_recipe("svamp"))


def test_missing_split_file_and_generate_flag_fail_early(tmp_path, monkeypatch):
    from smc_trainer.training.arguments import SparseTrainingArguments

    write_csv(tmp_path / "train.csv", [problem(0)])
    encoder = write_encoder(tmp_path / "encoder")
    monkeypatch.setattr(AutoModel, "from_pretrained", lambda *a, **k: pytest.fail("weights loaded before the check"))
    args = SparseTrainingArguments(output_dir=str(tmp_path), predict_with_generate=True, report_to="none")
    with pytest.raises(ValueError, match="--predict_with_generate does not apply to GTS"):
        build(ModelArguments(model_name_or_path=encoder), DataArguments(
            train_file=str(tmp_path / "train.csv"), test_file=str(tmp_path / "train.csv")), args, load_recipe("svamp"))
    data_args = DataArguments(data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="mawps-asdiv-a_svamp/train.csv' does not exist"):
        load_raw_splits(data_args, ModelArguments(cache_dir=str(tmp_path)), load_recipe("svamp"))

