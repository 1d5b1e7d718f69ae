"""`--calibration_file`: the accepted formats, the refusals (before any weights load) and that the file's examples,
not the training split's, are what the calibration hooks see."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from sparse_helpers import sparse_args

from smc_trainer.engine.masks import MASKS_NAME
from smc_trainer.errors import MissingFileError, UsageError
from smc_trainer.runs import pipeline
from smc_trainer.runs.config import parse_run_config
from smc_trainer.tasks.quickstart import make_examples
from smc_trainer.training.calibration_file import check_calibration_file, check_task_support


def _write(path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def _examples_json(path, n: int, seed: int) -> str:
    cols = make_examples(n, seed)
    rows = [{"question": q, "choices": c, "label": y}
            for q, c, y in zip(cols["question"], cols["choices"], cols["label"], strict=True)]
    return _write(path, json.dumps(rows))


def test_accepted_formats_count_their_examples(tmp_path):
    two = '[{"question": "q", "label": 0}, {"label": 1}]'
    assert check_calibration_file(_write(tmp_path / "a.json", two)) == 2
    assert check_calibration_file(_write(tmp_path / "a.jsonl", '{"label": 0}\n\n{"label": 1}\n{"label": 2}\n')) == 3
    csv_text = "Question,Numbers,Equation\nq,1 2,+ number0 number1\n"
    assert check_calibration_file(_write(tmp_path / "a.csv", csv_text)) == 1


@pytest.mark.parametrize("name,text,error,needle", [
    ("a.json", "", UsageError, "is empty"),
    ("a.json", "[{]", UsageError, "not valid JSON"),
    ("a.json", '{"question": "q"}', UsageError, "JSON array of objects"),
    ("a.json", "[]", UsageError, "holds no examples"),
    ("a.jsonl", '{"label": 0}\n[1, 2]\n', UsageError, "line 2: expected a JSON object"),
    ("a.jsonl", '{"label": 0}\n{"label": \n', UsageError, "line 2: not valid JSON"),
    ("a.csv", "Question,Numbers\nq,1,extra\n", UsageError, "row 2: 3 fields where the header has 2"),
    ("a.csv", "Question,Numbers\n", UsageError, "holds no examples"),
    ("a.txt", "some text\n", UsageError, "must end in .json, .jsonl, .csv"),
])
def test_bad_files_are_refused_with_what_is_wrong(tmp_path, name, text, error, needle):
    with pytest.raises(error, match=needle):
        check_calibration_file(_write(tmp_path / name, text))


def test_refused_when_the_flags_are_parsed(tmp_path):
    with pytest.raises(MissingFileError, match="does not exist"):
        sparse_args(tmp_path, "omp_after", 0.5, criterion="wanda", calibration_file=str(tmp_path / "none.json"))
    good = _write(tmp_path / "a.jsonl", '{"label": 0}\n')
    with pytest.raises(UsageError, match="no effect with --sparse_method omp_after and --criterion magnitude"):
        sparse_args(tmp_path, "omp_after", 0.5, calibration_file=good)
    assert sparse_args(tmp_path, "wanda_after", 0.5, calibration_file=good).calibration_file == good


def test_tasks_whose_examples_a_file_cannot_hold_are_refused():
    with pytest.raises(UsageError, match="the protein task calibrates on --calibration_samples"):
        check_task_support("protein")
    check_task_support("arithmetic")


@pytest.mark.parametrize("recipe", ["meltome", "mt_2to2"])
def test_run_config_refuses_the_file_for_tasks_that_cannot_read_it(tmp_path, recipe):
    good = _write(tmp_path / "a.jsonl", '{"label": 0}\n')
    with pytest.raises(UsageError, match="calibrates on --calibration_samples examples of its training split"):
        parse_run_config(["--recipe", recipe, "--sparse_method", "omp_after", "--criterion", "wanda", "--sparsity",
                          "0.5", "--prune_embeddings", "false", "--distribution", "uniform", "--calibration_file", good,
                          "--output_dir", str(tmp_path / "out"), "--use_cpu"])


def test_arithmetic_file_without_the_columns_is_refused(tmp_path):
    from smc_trainer.tasks.arithmetic.data import load_calibration_file

    with pytest.raises(UsageError, match="Question, Numbers, Equation"):
        load_calibration_file(_write(tmp_path / "a.csv", "Question,Answer\nq,1\n"), None)
    ok = load_calibration_file(_write(tmp_path / "b.csv", "Question,Numbers,Equation,Answer\nq number0,3,number0,3\n"),
                               None)
    assert ok.column_names == ["Question", "Numbers", "Equation"] and len(ok) == 1


def _wanda_masks(tmp_path, name: str, *extra: str) -> dict[str, torch.Tensor]:
    config = parse_run_config([
        "--model_name_or_path", "tiny", "--num_synthetic_examples", "48", "--max_eval_samples", "8",
        "--per_device_eval_batch_size", "16", "--dense_cache_dir", str(tmp_path / "cache"),
        "--output_dir", str(tmp_path / name), "--sparse_method", "omp_before", "--criterion", "wanda",
        "--sparsity", "0.5", "--max_steps", "0", "--prune_embeddings", "false", "--distribution", "uniform",
        "--calibration_samples", "128", "--report_to", "none", "--disable_tqdm", "true", "--log_level", "warning",
        "--use_cpu", *extra,
    ])
    pipeline.run(config, str(tmp_path / name))
    return load_file(str(tmp_path / name / MASKS_NAME))


def test_the_file_replaces_the_training_split_in_calibration(tmp_path):
    """A file holding exactly the training split's examples gives the training split's masks; a file of other
    examples gives other masks: the hooks saw the file."""
    from_train = _wanda_masks(tmp_path, "train")
    same = _wanda_masks(tmp_path, "same", "--calibration_file", _examples_json(tmp_path / "same.json", 48, 0))
    other = _wanda_masks(tmp_path, "other", "--calibration_file", _examples_json(tmp_path / "other.json", 48, 7))
    assert from_train.keys() == same.keys() == other.keys() and from_train
    assert all(torch.equal(from_train[n], same[n]) for n in from_train)
    assert any(not torch.equal(from_train[n], other[n]) for n in from_train)
