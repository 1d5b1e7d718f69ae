"""The model card's metadata is what the Hub reads: a `model-index` of EvalResults (task, dataset, split, every
score, the sparsity with method and pattern) that parses back with huggingface_hub to exactly what was written,
fits the model-index schema, and a body whose one command line reparses into the same run. Offline throughout."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from numbers import Number
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results
from safetensors.torch import load_file
from sparse_helpers import make_trainer, sparse_args

from run_smc import main
from smc_trainer.release.model_card import CardFacts, _metric_entry, card_data, eval_results, model_card
from smc_trainer.release.provenance import NOT_REPRODUCED
from smc_trainer.runs.config import parse_run_config


def _cli(out: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", "tiny", "--max_steps", "3", "--output_dir", str(out), "--report_to", "none",
            "--num_synthetic_examples", "48", "--max_eval_samples", "16", "--use_cpu", "--disable_tqdm", "true",
            "--log_level", "warning", "--dense_cache_dir", str(out.parent / "cache"), "--sparse_method",
            "omp_before", "--sparsity", "0.5", "--learning_rate", "2e-3", *extra]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Path:
    """A quickstart run on the tiny model through run_smc.py: the card a user of the CLI gets."""
    out = tmp_path_factory.mktemp("card") / "run"
    main(_cli(out, "--hub_model_id", "me/tiny-omp"))
    return out


def _front_matter(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, "the card has no YAML front matter"
    return yaml.safe_load(match.group(1))


def _check_model_index_schema(index: object) -> None:
    """The model-index schema the Hub validates (huggingface/hub-docs modelcard.md), checked offline."""
    assert isinstance(index, list) and len(index) == 1
    entry = index[0]
    assert set(entry) == {"name", "results"} and isinstance(entry["name"], str) and entry["name"]
    assert isinstance(entry["results"], list) and entry["results"]
    for result in entry["results"]:
        assert set(result) == {"task", "dataset", "metrics"}
        assert set(result["task"]) <= {"type", "name"} and isinstance(result["task"]["type"], str)
        assert set(result["dataset"]) <= {"type", "name", "config", "split", "revision", "args"}
        assert all(isinstance(result["dataset"][k], str) for k in ("type", "name"))
        assert result["metrics"]
        for metric in result["metrics"]:
            assert set(metric) <= {"type", "value", "name", "config", "args", "verified", "verifyToken"}
            assert isinstance(metric["type"], str) and isinstance(metric["value"], Number)


def test_cli_card_has_a_model_index_with_task_dataset_metrics_and_sparsity(cli_run):
    meta = _front_matter(cli_run / "README.md")
    _check_model_index_schema(meta["model-index"])
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == "me/tiny-omp"
    metrics = json.loads((cli_run / "all_results.json").read_text())
    scores = {r.metric_name: r for r in results if r.metric_type != "sparsity"}
    expected = {k for k in metrics if k.startswith(("eval_", "test_"))
                and not k.endswith(("_runtime", "_per_second", "_samples"))}
    assert set(scores) == expected == {"eval_accuracy", "eval_loss", "test_accuracy", "test_loss"}
    for key, r in scores.items():
        assert (r.task_type, r.task_name) == ("multiple-choice", "Multiple choice")
        assert (r.dataset_type, r.dataset_split) == ("quickstart", "validation" if key.startswith("eval_") else "test")
        assert r.dataset_name.startswith("synthetic multiple-choice questions")
        assert r.metric_value == metrics[key]
    assert scores["eval_accuracy"].metric_type == "accuracy"
    sparsity = {r.metric_name: r for r in results if r.metric_type == "sparsity"}
    assert set(sparsity) == {"sparsity of the prunable weights", "sparsity of all parameters"}
    config = json.loads((cli_run / "config.json").read_text())["sparsity"]
    assert sparsity["sparsity of the prunable weights"].metric_value == round(config["achieved_sparsity"], 6)
    weights = load_file(str(cli_run / "model.safetensors"))
    zeros = sum(t.numel() - int(torch.count_nonzero(t)) for t in weights.values())
    total = sum(t.numel() for t in weights.values())
    assert sparsity["sparsity of all parameters"].metric_value == round(zeros / total, 6)
    assert 0 < zeros / total < config["achieved_sparsity"]  # dense biases and norms dilute it
    for r in sparsity.values():
        assert r.metric_config == "unstructured"
        assert r.metric_args == {"method": "omp_before", "pattern": "unstructured", "target": 0.5}
    assert {"sparse", "sparsity", "smc-bench", "omp_before", "unstructured-sparsity"} <= set(meta["tags"])


def test_card_yaml_round_trips_through_model_card_data(cli_run):
    meta = _front_matter(cli_run / "README.md")
    data = ModelCard.load(str(cli_run / "README.md")).data
    again = ModelCardData(**meta)
    groups = meta["model-index"][0]["results"]
    assert [g["dataset"].get("split") for g in groups] == ["validation", "test", None]  # sparsity: of no split
    assert again.eval_results == data.eval_results and len(data.eval_results) == sum(len(g["metrics"]) for g in groups)
    assert eval_results_to_model_index(data.model_name, data.eval_results) == meta["model-index"]
    assert again.to_dict() == data.to_dict() == meta


def test_what_the_card_writes_is_what_the_hub_client_reads():
    facts = CardFacts(
        sparsity={"method": "sparsegpt", "phase": "before", "target_sparsity": 0.5, "achieved_sparsity": 0.5,
                  "mask_sparsity": 0.5, "distribution": "uniform", "prunable_parameters": 8, "total_parameters": 10},
        layers=[], metrics={"eval_accuracy": 0.75, "test_accuracy": 0.5, "test_middle_accuracy": 0.25,
                            "test_samples": 12, "eval_runtime": 1.5, "train_loss": 2.0},
        run={"recipe": {"name": "race", "task": "multiple_choice", "metric": "accuracy",
                        "splits": {"validation": "validation", "test": "test"}},
             "data_args": {"dataset_name": "ehovy/race", "dataset_config_name": "all"}},
        repo_id="me/race-2of4", pattern="2:4", overall_sparsity=0.4)
    written = eval_results(facts)
    card = model_card(facts)
    assert ModelCard(card.content).data.eval_results == written  # parsed from the text, equal field by field
    by_name = {r.metric_name: r for r in written}
    assert list(by_name) == ["eval_accuracy", "test_accuracy", "test_middle_accuracy",
                             "sparsity of the prunable weights", "sparsity of all parameters"]
    assert by_name["test_middle_accuracy"].metric_type == "accuracy"
    assert {(r.dataset_type, r.dataset_config, r.dataset_split) for r in written} == {
        ("ehovy/race", "all", "validation"), ("ehovy/race", "all", "test"), ("ehovy/race", "all", None)}
    assert by_name["sparsity of all parameters"].metric_value == 0.4
    assert by_name["sparsity of the prunable weights"].metric_config == "2:4"
    assert "2-4-sparsity" in card.data.tags and "sparsegpt" in card.data.tags
    assert card.data.model_name == "me/race-2of4"
    _check_model_index_schema(_front_matter_of(card.content)["model-index"])


def _front_matter_of(content: str) -> dict:
    return yaml.safe_load(re.match(r"---\n(.*?)\n---\n", content, re.S).group(1))


def test_a_hub_dataset_recipe_names_its_id_config_and_task(tmp_path):
    trainer = make_trainer("bert", sparse_args(tmp_path / "run", "omp_before", 0.5, max_steps=1))
    trainer.train()
    config = parse_run_config(["--recipe", "winogrande", "--output_dir", str(tmp_path / "x"), "--use_cpu",
                               "--sparse_method", "omp_before", "--sparsity", "0.5"])
    trainer.save_sparse_pretrained(str(tmp_path / "out"), run_config=config,
                                   metrics={"eval_accuracy": 0.5, "eval_samples": 4})
    data = ModelCard.load(str(tmp_path / "out" / "README.md")).data
    scores = [r for r in data.eval_results if r.metric_type != "sparsity"]
    assert [(r.metric_name, r.metric_value) for r in scores] == [("eval_accuracy", 0.5)]
    r = scores[0]
    split = config.recipe.split("validation")
    assert (r.task_type, r.dataset_type, r.dataset_name, r.dataset_config, r.dataset_split) == (
        "multiple-choice", "allenai/winogrande", "allenai/winogrande", "winogrande_xl", split)


def test_without_a_known_dataset_there_is_no_model_index_but_the_tags_say_sparse(tmp_path):
    trainer = make_trainer("bert", sparse_args(tmp_path / "run", "omp_before", 0.5, max_steps=1))
    trainer.train()
    out = trainer.save_sparse_pretrained(str(tmp_path / "out"), metrics={"eval_accuracy": 0.5})
    meta = _front_matter(Path(out) / "README.md")
    assert "model-index" not in meta  # the Hub needs a dataset for each result; the Python API names none
    assert {"sparsity", "omp_before", "unstructured-sparsity"} <= set(meta["tags"])


def test_metric_keys_map_to_split_and_type():
    assert _metric_entry("eval_accuracy", "accuracy") == ("validation", "accuracy")
    assert _metric_entry("test_de_en_bleu", "bleu") == ("test", "bleu")
    assert _metric_entry("eval_loss", "accuracy") == ("validation", "loss")
    assert _metric_entry("eval_samples", "accuracy") is None and _metric_entry("train_loss", None) is None


def test_card_states_one_command_that_reparses_into_the_same_run(cli_run):
    text = ModelCard.load(str(cli_run / "README.md")).text
    commands = [line for line in text.splitlines() if line.startswith("python run_smc.py")]
    assert len(commands) == 1
    tokens = shlex.split(commands[0])
    assert tokens[:4] == ["python", "run_smc.py", "--recipe", "quickstart"] and tokens[-2:] == ["--output_dir",
                                                                                                   "my_run"]
    again = parse_run_config(tokens[2:])
    first = parse_run_config(_cli(cli_run, "--hub_model_id", "me/tiny-omp"))
    for part in ("model_args", "data_args", "training_args"):
        a, b = getattr(again, part), getattr(first, part)
        for f in dataclasses.fields(a):
            if f.init and f.name not in NOT_REPRODUCED and not f.name.startswith("_"):
                assert getattr(a, f.name) == getattr(b, f.name), f.name


def test_card_data_of_a_run_without_metrics_still_carries_sparsity():
    facts = CardFacts(sparsity={"method": "gmp", "phase": "during", "target_sparsity": 0.5, "achieved_sparsity": 0.5,
                                "mask_sparsity": 0.5}, layers=[], architecture="BertForSequenceClassification",
                      dataset="local files (x.csv)", run={"recipe": {"name": "mine", "task": "unknown"}})
    results = card_data(facts).eval_results
    assert [r.metric_type for r in results] == ["sparsity"]  # overall unknown: only the measured prunable share
    assert isinstance(results[0], EvalResult) and results[0].task_type == "text-classification"
    assert results[0].dataset_type == "mine" and results[0].metric_config is None


def test_config_sparsity_entry_names_the_pattern_and_the_criterion(cli_run):
    sparsity = json.loads((cli_run / "config.json").read_text())["sparsity"]
    assert sparsity["pattern"] == "unstructured" and sparsity["criterion"] == "magnitude"
    assert sparsity["method"] == "omp_before" and sparsity["target_sparsity"] == 0.5


def _adapter_facts(adapter: dict) -> CardFacts:
    base = {"base": "tiny", "sparse_adapter": True, "release": "merged", "adapted_modules": 8,
            "target_modules": ["query", "value"], "modules_to_save": ["classifier"]}
    return CardFacts(sparsity={"method": "gmp", "phase": "during", "target_sparsity": 0.5, "achieved_sparsity": 0.5,
                               "mask_sparsity": 0.5, "distribution": "global", "prunable_parameters": 8,
                               "total_parameters": 10, "adapter": {**base, **adapter}}, layers=[])


def test_adapter_section_names_the_tuner_and_only_its_own_settings():
    lora = model_card(_adapter_facts({"peft": "lora", "r": 8, "lora_alpha": 16, "lora_dropout": 0.0})).content
    ia3 = model_card(_adapter_facts({"peft": "ia3", "r": None, "lora_alpha": None, "lora_dropout": None})).content
    assert "## Adapter (LoRA)" in lora and "| rank / alpha / dropout | 8 / 16 / 0.0 |" in lora
    assert "## Adapter (IA3)" in ia3 and "Trained with IA3 on a frozen sparse base" in ia3
    section = ia3.split("## Adapter (IA3)")[1].split("\n## ")[0]
    assert "LoRA" not in section and "None" not in section and "rank" not in section
