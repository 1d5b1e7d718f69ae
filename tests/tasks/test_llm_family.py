"""The causal_lm family end to end through `run_smc.py` (recipes llm_*), offline on a tiny Llama and local files.

Every metric a run writes is compared with the scoring functions run directly on the model the run saved; the
recovery run's labels are checked token by token and its merged release zero for zero against its masks.
"""

from __future__ import annotations

import csv
import json
import math
import os

import pytest
import torch
from datasets import load_dataset
from llm_helpers import byte_tokenizer, save_tiny_causal_lm, tiny_causal_lm
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from smc_trainer.cli import cli, main
from smc_trainer.engine.masks import MASKS_NAME
from smc_trainer.errors import UsageError
from smc_trainer.runs.config import parse_run_config
from smc_trainer.runs.dense_cache import config_fingerprint
from smc_trainer.tasks.causal_lm import prompts, scoring
from smc_trainer.tasks.causal_lm.data import IGNORE_INDEX
from smc_trainer.tasks.multiple_choice import to_canonical

QUESTIONS = ["Where do you keep milk cold?", "What do birds use to fly?", "What do you read?",
             "Where do fish live?", "What lights the day?", "What do you sit on?"]
CHOICES = [["fridge", "oven", "desk", "car", "bag"], ["wings", "wheels", "roots", "fins", "keys"],
           ["book", "spoon", "shoe", "cup", "door"], ["water", "sand", "tree", "sky", "road"],
           ["sun", "moon", "lamp", "fire", "star"], ["chair", "wall", "roof", "sink", "lake"]]
ANSWER_KEYS = ["A", "A", "A", "A", "A", "A"]
TEXT = ("The sparse model keeps the weights that matter and drops the rest. " * 40
        + "Language models predict the next token from the ones before it. " * 40)
CHEAP = ["--torch_dtype", "float32", "--per_device_eval_batch_size", "4", "--per_device_train_batch_size", "2",
         "--report_to", "none", "--use_cpu", "--disable_tqdm", "true", "--save_strategy", "no"]


def csqa_rows(indices):
    """Rows in tau/commonsense_qa's own schema (choices {label, text}, answerKey)."""
    return [{"id": f"q{i}", "question": QUESTIONS[i], "question_concept": "thing",
             "choices": {"label": list("ABCDE"), "text": CHOICES[i]}, "answerKey": ANSWER_KEYS[i]} for i in indices]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm_data")
    model = save_tiny_causal_lm(root / "llama", "llama")
    text = root / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    return {"model": model, "text": str(text), "train": write_jsonl(root / "train.jsonl", csqa_rows(range(4))),
            "test": write_jsonl(root / "test.jsonl", csqa_rows(range(2, 6)))}


def csqa_flags(files, out, *extra) -> list[str]:
    return ["--recipe", "llm_csqa", "--model_name_or_path", files["model"], "--train_file", files["train"],
            "--test_file", files["test"], "--perplexity_text", files["text"], "--perplexity_seq_len", "64",
            "--calibration_text", files["text"], "--calibration_seq_len", "32", "--calibration_samples", "4",
            "--max_seq_length", "96", "--output_dir", str(out), "--dense_cache_dir", str(out.parent / "dense"),
            *CHEAP, *extra]


def wanda_flags():
    return ["--sparse_method", "omp_before", "--criterion", "wanda", "--sparsity", "0.5"]


def saved_results(out) -> dict[str, float]:
    return json.loads((out / "all_results.json").read_text(encoding="utf-8"))


def test_one_shot_wanda_run_reports_what_the_scorers_give_on_the_saved_model(files, tmp_path, capsys):
    out = tmp_path / "oneshot"
    main(csqa_flags(files, out, *wanda_flags(), "--max_steps", "0"))
    metrics = saved_results(out)
    summary = capsys.readouterr().out
    assert f"test_accuracy {metrics['test_accuracy']:.4f}, test_perplexity {metrics['test_perplexity']:.4f}" in summary
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = byte_tokenizer()
    rows = list(to_canonical(load_dataset("json", data_files=files["test"])["train"],
                             where="test"))
    direct = scoring.score_choices(model, tokenizer, prompts.csqa_requests(rows), batch_size=4, progress=False)
    assert metrics["test_accuracy"] == direct["accuracy"]
    assert metrics["test_accuracy_norm"] == direct["accuracy_norm"]
    assert metrics["test_samples"] == 4
    ppl = scoring.perplexity(model, tokenizer, TEXT, seq_len=64, progress=False)
    assert metrics["test_perplexity"] == pytest.approx(ppl, rel=1e-6) and math.isfinite(ppl)
    # the decoder linears at exactly half their weights per row (wanda's row comparison), lm_head and embeddings
    # bit for bit the pretrained ones
    dense = tiny_causal_lm("llama")
    for name, param in model.named_parameters():
        if ".layers." in name and name.endswith("proj.weight"):
            assert (param == 0).sum(dim=1).tolist() == [param.shape[1] // 2] * param.shape[0], name
        elif name in ("lm_head.weight", "model.embed_tokens.weight"):
            assert torch.equal(param, dict(dense.named_parameters())[name]), name


def test_lora_recovery_merges_with_every_zero_and_trains_on_answer_tokens_only(files, tmp_path):
    from smc_trainer.tasks.causal_lm.family import build

    out = tmp_path / "recovery"
    flags = csqa_flags(files, out, *wanda_flags(), "--max_steps", "3", "--peft", "lora", "--learning_rate", "1e-2")
    config = parse_run_config(flags)
    bundle = build(config.model_args, config.data_args, config.training_args, config.recipe)
    tokenizer = bundle.processing_class
    pairs = prompts.training_pairs("multiple_choice", [dict(r) for r in to_canonical(
        load_dataset("json", data_files=files["train"])["train"], where="train")])
    assert len(bundle.train_dataset) == len(pairs) == 4
    for row, (prompt, answer) in zip(bundle.train_dataset, pairs):
        context_ids, answer_ids = scoring.pair_tokens(tokenizer, prompt, answer, scoring.special_prefix(tokenizer))
        assert row["input_ids"] == context_ids + answer_ids
        assert row["labels"] == [IGNORE_INDEX] * len(context_ids) + answer_ids  # the loss sees the answer only
    batch = bundle.data_collator([bundle.train_dataset[i] for i in range(2)])
    assert ((batch["labels"] == IGNORE_INDEX) | (batch["labels"] == batch["input_ids"])).all()
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()  # padding is no label either

    main(flags)
    metrics = saved_results(out)
    assert metrics["train_samples"] == 4 and math.isfinite(metrics["train_loss"])
    masks = load_file(os.path.join(out, MASKS_NAME))
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    weights = dict(merged.named_parameters())
    pretrained = dict(tiny_causal_lm("llama").named_parameters())
    changed = 0
    for name, mask in masks.items():
        weight = weights[name]
        assert int((weight[~mask.bool()] != 0).sum()) == 0, name  # every pruned weight is still zero
        changed += int((weight[mask.bool()] != pretrained[name][mask.bool()]).sum())
    assert changed > 0, "the adapters changed nothing"
    assert torch.equal(weights["lm_head.weight"], pretrained["lm_head.weight"])  # frozen, not a modules_to_save copy
    model = merged.eval()
    rows = list(to_canonical(load_dataset("json", data_files=files["test"])["train"],
                             where="test"))
    direct = scoring.score_choices(model, byte_tokenizer(), prompts.csqa_requests(rows), batch_size=4, progress=False)
    assert metrics["test_accuracy"] == direct["accuracy"]


def test_lora_on_a_causal_lm_is_peft_causal_lm_with_a_frozen_head(tmp_path):
    from peft import PeftModelForCausalLM

    from smc_trainer.training.adapters import wrap_with_lora
    from smc_trainer.training.arguments import SparseTrainingArguments

    args = SparseTrainingArguments(str(tmp_path), sparse_method="omp_before", sparsity=0.5, peft="lora",
                                   prune_embeddings=False, report_to="none")
    model = wrap_with_lora(tiny_causal_lm("llama"), args)
    assert isinstance(model, PeftModelForCausalLM) and model.peft_config["default"].task_type == "CAUSAL_LM"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


ARITHMETIC = [("number0 apples and number1 more apples . How many apples ?", "3 4", "+ number0 number1"),
              ("A box holds number0 pens . How many pens in number1 boxes ?", "6 2", "* number0 number1"),
              ("number0 cakes shared by number1 kids . How many each ?", "8 4", "/ number0 number1"),
              ("Tom had number0 cards and gave number1 away . How many left ?", "9 5", "- number0 number1"),
              ("number0 birds and number1 birds . How many birds ?", "2 7", "+ number0 number1"),
              ("A bag has number0 balls . How many in number1 bags ?", "5 3", "* number0 number1")]


def write_csv(path, rows) -> str:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Question", "Numbers", "Equation", "Answer"])
        writer.writerows([*row, ""] for row in rows)
    return str(path)


def test_arithmetic_recipe_scores_the_generated_answers(files, tmp_path, monkeypatch):
    train = write_csv(tmp_path / "train.csv", ARITHMETIC[:4])
    test = write_csv(tmp_path / "test.csv", ARITHMETIC[4:])
    seen: list[str] = []

    def stub(model, tokenizer, texts, **kwargs):
        seen.extend(texts)  # the first problem answered right (9), the second wrong
        return [" 9\n", " 14\n"][:len(texts)]

    monkeypatch.setattr(scoring, "generate_answers", stub)
    out = tmp_path / "svamp"
    metrics = main(["--recipe", "llm_svamp", "--model_name_or_path", files["model"], "--train_file", train,
                    "--test_file", test, "--perplexity_text", "none", "--sparse_method", "omp_before",
                    "--sparsity", "0.5", "--max_steps", "0", "--output_dir", str(out), *CHEAP])
    assert metrics["test_accuracy"] == 0.5 and metrics["test_correct"] == 1 and metrics["test_total"] == 2
    assert "test_perplexity" not in metrics
    expected, answers = prompts.arithmetic_prompts([dict(r) for r in _csv_rows(train)], _csv_rows(test), shots=4,
                                                   seed=0)
    assert seen == expected and answers == [9.0, 15.0]
    assert all(p.count("Question:") == 5 for p in seen)  # 4 solved problems, then the question


def _csv_rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: row[k] for k in ("Question", "Numbers", "Equation")} for row in csv.DictReader(fh)]


def test_encoder_recipe_with_a_causal_lm_names_its_llm_twin(files, tmp_path, capsys, monkeypatch):
    import transformers

    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded before the causal LM was refused")

    monkeypatch.setattr(transformers.AutoModelForMultipleChoice, "from_pretrained", no_weights)
    with pytest.raises(SystemExit) as exit_info:
        cli(["--recipe", "csqa", "--model_name_or_path", files["model"], "--train_file", files["train"],
             "--validation_file", files["test"], "--output_dir", str(tmp_path / "csqa"), "--max_steps", "1",
             "--report_to", "none", "--use_cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "--recipe llm_csqa" in err and "causal language model (llama)" in err


def test_causal_lm_flags_are_refused_for_other_tasks_and_leave_keys_alone_at_their_defaults():
    with pytest.raises(UsageError, match="--torch_dtype is a flag of the causal_lm task"):
        parse_run_config(["--recipe", "csqa", "--torch_dtype", "bfloat16"])
    plain = config_fingerprint(parse_run_config(["--recipe", "csqa"]), include_sparse=True)["training"]
    assert not {"torch_dtype", "llm_task", "perplexity_text", "calibration_text", "train_text"} & set(plain)
    recipe = config_fingerprint(parse_run_config(["--recipe", "llm_csqa"]), include_sparse=True)["training"]
    assert recipe["torch_dtype"] == "bfloat16" and recipe["llm_task"] == "csqa"
    with pytest.raises(UsageError, match="--calibration_text must be c4, wikitext2 or a local file"):
        parse_run_config(["--recipe", "llm_csqa", "--calibration_text", "calibration.csv"])
    with pytest.raises(UsageError, match="--perplexity_text 'missing.txt' does not exist"):
        parse_run_config(["--recipe", "llm_csqa", "--perplexity_text", "missing.txt"])


def test_sweep_interrupted_after_its_first_run_finishes_only_the_rest(files, tmp_path, monkeypatch):
    from smc_trainer.runs import pipeline
    from smc_trainer.runs.ledger import Ledger

    real, calls = pipeline.fine_tune, []

    def interrupted_after_one(config, output_dir, **kwargs):
        calls.append(config.training_args.sparsity)
        if len(calls) == 2 and interrupt:
            raise KeyboardInterrupt
        return real(config, output_dir, **kwargs)

    monkeypatch.setattr(pipeline, "fine_tune", interrupted_after_one)
    sweep_dir = tmp_path / "sweep"
    flags = csqa_flags(files, tmp_path / "unused", "--max_steps", "0")[2:]  # without --recipe
    flags = [f for i, f in enumerate(flags) if f not in ("--output_dir", "--dense_cache_dir")
             and flags[i - 1] not in ("--output_dir", "--dense_cache_dir")]
    argv = ["sweep", "--recipes", "llm_csqa", "--methods", "wanda_before", "--sparsities", "0.5,0.7",
            "--sweep_dir", str(sweep_dir), *flags]
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    first = Ledger(str(sweep_dir / "ledger.jsonl")).records()
    assert [r["target_sparsity"] for r in first] == [0.5] and calls == [0.5, 0.7]
    interrupt, calls[:] = False, []
    main(argv)
    records = Ledger(str(sweep_dir / "ledger.jsonl")).records()
    assert calls == [0.7], "the rerun trains only the run the interruption left"
    assert records[0] == first[0] and [r["target_sparsity"] for r in records] == [0.5, 0.7]
    assert all("test_perplexity" in r["metrics"] and "test_accuracy_norm" in r["metrics"] for r in records)


WINOGRANDE = [{"sentence": "The cup fell off the table because the _ was tilted.", "option1": "cup",
               "option2": "table", "answer": "2"},
              {"sentence": "Anna gave Maria a gift because _ was kind.", "option1": "Anna", "option2": "Maria",
               "answer": "1"},
              {"sentence": "The dog chased the cat until the _ got tired.", "option1": "dog", "option2": "cat",
               "answer": "1"}]
RACE = [{"example_id": f"{level}{i}.txt", "article": f"Tom has a {pet}. It likes to play in the garden every day.",
         "question": "What does Tom have?" if i % 2 else "Tom has a _ .", "options": [pet, "car", "house", "boat"],
         "answer": "A"} for level in ("middle", "high") for i, pet in enumerate(["dog", "cat", "bird"])]


@pytest.mark.parametrize("recipe,rows,requests", [("llm_winogrande", WINOGRANDE, "winogrande_requests"),
                                                  ("llm_race", RACE, "race_requests")])
def test_winogrande_and_race_report_the_scorers_numbers_per_subset_and_pooled(files, tmp_path, recipe, rows,
                                                                               requests):
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / recipe
    metrics = main(["--recipe", recipe, "--model_name_or_path", files["model"], "--train_file", data, "--test_file",
                    data, "--perplexity_text", "none", "--sparse_method", "omp_before", "--sparsity", "0.5",
                    "--max_steps", "0", "--output_dir", str(out), *CHEAP])
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    canonical = [dict(r) for r in to_canonical(load_dataset("json", data_files=data)["train"], where="test")]
    build = getattr(prompts, requests)
    if recipe == "llm_race":  # each level on its own, then pooled over both
        for level in ("middle", "high"):
            part = [r for r in canonical if r["subset"] == level]
            direct = scoring.score_choices(model, byte_tokenizer(), build(part), batch_size=4, progress=False)
            assert metrics[f"test_{level}_accuracy"] == direct["accuracy"]
            assert metrics[f"test_{level}_accuracy_norm"] == direct["accuracy_norm"]
        assert metrics["test_accuracy"] == pytest.approx((metrics["test_middle_accuracy"]
                                                          + metrics["test_high_accuracy"]) / 2)
    else:
        direct = scoring.score_choices(model, byte_tokenizer(), build(canonical), batch_size=4, progress=False)
        assert metrics["test_accuracy"] == direct["accuracy"] and metrics["test_samples"] == 3
        assert metrics["test_accuracy_norm"] == direct["accuracy_norm"]


def test_wikitext2_recipe_recovers_on_text_windows_and_reports_their_perplexity(files, tmp_path):
    out = tmp_path / "wikitext"
    metrics = main(["--recipe", "llm_wikitext2", "--model_name_or_path", files["model"], "--perplexity_text",
                    files["text"], "--train_text", files["text"], "--perplexity_seq_len", "64", "--max_seq_length",
                    "128", "--sparse_method", "omp_before", "--sparsity", "0.5", "--max_steps", "2",
                    "--output_dir", str(out), *CHEAP])
    windows = len(byte_tokenizer()(TEXT)["input_ids"]) // 128  # one token per byte
    assert metrics["train_samples"] == windows and math.isfinite(metrics["train_loss"])
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert metrics["test_perplexity"] == pytest.approx(scoring.perplexity(model, byte_tokenizer(), TEXT, seq_len=64,
                                                                          progress=False), rel=1e-6)
    assert not any(k.startswith("test_accuracy") for k in metrics)


@pytest.mark.slow
def test_mawps_fold_on_the_real_files_reports_the_generation_scorers_accuracy(files, tmp_path, shared_data):
    out = tmp_path / "mawps"
    metrics = main(["--recipe", "llm_mawps", "--model_name_or_path", files["model"], "--data_dir",
                    str(shared_data / "arithmetic"), "--fold", "0", "--max_eval_samples", "6", "--perplexity_text",
                    "none", "--sparse_method", "omp_before", "--sparsity", "0.5", "--max_steps", "0",
                    "--generation_max_length", "8", "--output_dir", str(out), *CHEAP])
    fold = shared_data / "arithmetic" / "cv_mawps" / "fold0"
    expected, answers = prompts.arithmetic_prompts(_csv_rows(fold / "train.csv"), _csv_rows(fold / "dev.csv")[:6],
                                                   shots=4, seed=0)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    direct = scoring.score_generation(model, byte_tokenizer(), expected, answers, max_new_tokens=8, batch_size=4,
                                      progress=False)
    assert metrics["test_accuracy"] == direct["accuracy"] and metrics["test_total"] == 6


def test_dense_baseline_is_the_pretrained_model_and_snip_reads_the_training_pairs(files, tmp_path):
    dense = main(csqa_flags(files, tmp_path / "dense", "--sparse_method", "dense"))
    pretrained = tiny_causal_lm("llama")
    rows = list(to_canonical(load_dataset("json", data_files=files["test"])["train"], where="test"))
    direct = scoring.score_choices(pretrained, byte_tokenizer(), prompts.csqa_requests(rows), batch_size=4,
                                   progress=False)
    assert dense["test_accuracy"] == direct["accuracy"] and dense["test_accuracy_norm"] == direct["accuracy_norm"]
    assert dense["train_samples"] == 0  # num_train_epochs 0: nothing tokenized, no step taken
    snip = main(csqa_flags(files, tmp_path / "snip", "--sparse_method", "snip", "--sparsity", "0.5",
                           "--max_steps", "0"))
    assert snip["train_samples"] == 4 and snip["sparsity/overall"] == pytest.approx(0.5)


def test_sparsegpt_calibrates_a_lora_wrapped_model_as_the_plain_one(files, tmp_path):
    """Under --peft lora the hooks sit on each LoRA layer's base layer; with the adapters at zero (before any step)
    SparseGPT sees the same inputs, so it chooses the same masks and writes the same weights."""
    weights, masks = {}, {}
    for name, extra in (("plain", []), ("lora", ["--peft", "lora"])):
        out = tmp_path / name
        main(csqa_flags(files, out, "--sparse_method", "sparsegpt_before", "--sparsity", "0.5", "--max_steps", "0",
                        "--perplexity_text", "none", *extra))
        weights[name] = load_file(os.path.join(out, "model.safetensors"))
        masks[name] = load_file(os.path.join(out, MASKS_NAME))
    assert masks["plain"].keys() == masks["lora"].keys() and len(masks["plain"]) == 14  # 7 linears x 2 blocks
    assert all(torch.equal(masks["lora"][k], m) for k, m in masks["plain"].items())
    assert weights["plain"].keys() == weights["lora"].keys()
    for key, value in weights["plain"].items():
        torch.testing.assert_close(weights["lora"][key], value, rtol=0, atol=1e-6, msg=key)
    assert not torch.equal(weights["plain"]["model.layers.1.self_attn.q_proj.weight"],
                           tiny_causal_lm("llama").model.layers[1].self_attn.q_proj.weight)  # SparseGPT updated it
