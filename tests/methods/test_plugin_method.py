"""A plugin method with hyper-parameters of its own (tests/plugins/two_step_method.py) is first-class: flags in
--help, its checks at parse time, keys, variant rows in a sweep and its report, checkpointed state on resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sparse_helpers import make_trainer, sparse_args

from smc_trainer.engine.selection import keep_count
from smc_trainer.plugins import load_plugins
from smc_trainer.runs.config import make_parser, parse_run_config
from smc_trainer.runs.ledger import Ledger
from smc_trainer.runs.report import write_report
from smc_trainer.runs.sweep import SweepArguments, run_key, run_sweep
from smc_trainer.runs.variants import row_label
from smc_trainer.training.callbacks import STATE_NAME

PLUGIN = str(Path(__file__).resolve().parents[1] / "plugins" / "two_step_method.py")
RUN = ["--plugins", PLUGIN, "--recipe", "quickstart", "--sparse_method", "two_step", "--sparsity", "0.5"]
TINY = ["--model_name_or_path", "tiny", "--max_steps", "4", "--num_synthetic_examples", "48",
        "--max_eval_samples", "16", "--per_device_train_batch_size", "8", "--report_to", "none", "--use_cpu"]


def test_its_flags_are_in_help_with_their_help_text():
    text = make_parser(argv=["--plugins", PLUGIN]).format_help()
    assert "--two_step_first" in text and "--two_step_at" in text
    assert "fraction of the target sparsity reached at the first event" in " ".join(text.split())


def test_a_bad_value_is_refused_at_parse_time_naming_the_flag(tmp_path, capsys):
    from run_smc import cli

    with pytest.raises(SystemExit) as exit_info:
        cli([*RUN, "--two_step_first", "1.5", "--output_dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "run_smc.py: error: --two_step_first must be in (0, 1]; got 1.5"
    assert not (tmp_path / "run").exists()


def test_its_values_are_part_of_the_run_key_and_absent_at_their_defaults(tmp_path):
    def key(*flags):
        return run_key(parse_run_config([*RUN, *flags, "--output_dir", str(tmp_path / "run")]))

    default, explicit_default, other = key(), key("--two_step_at", "0.5"), key("--two_step_at", "0.25")
    assert default == explicit_default != other
    assert other.split("/")[1] == "two_step:two_step_at=0.25"  # the row tells the variant apart


def test_a_sweep_over_two_values_writes_two_rows_and_reports_both(tmp_path):
    sweep = SweepArguments(recipes="quickstart", methods="two_step:first=0.25,two_step:first=0.75",
                           sparsities="0.5", sweep_dir=str(tmp_path / "sweep"))
    run_sweep(sweep, [*TINY, "--plugins", PLUGIN, "--disable_tqdm", "true"])
    records = Ledger(sweep.ledger_path()).records()
    assert sorted(r["row"] for r in records) == ["two_step:two_step_first=0.25", "two_step:two_step_first=0.75"]
    assert {r["config"]["training"]["two_step_first"] for r in records} == {0.25, 0.75}
    paths = write_report(sweep.ledger_path(), str(tmp_path / "report"))
    table = Path(paths["markdown"][0]).read_text(encoding="utf-8")
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| two_step")]
    assert rows == ["two_step [two_step_first=0.25]", "two_step [two_step_first=0.75]"]
    assert row_label("two_step", {"two_step_first": 0.25}) == "two_step (During), two_step_first 0.25"  # plot legend


def test_resume_restores_its_state_and_reproduces_the_run(tmp_path):
    load_plugins(PLUGIN)
    steps = dict(max_steps=6, save_strategy="steps", save_steps=3, plugins=PLUGIN, two_step_first=0.4,
                 two_step_at=0.3)
    full = make_trainer("bert", sparse_args(tmp_path / "run", "two_step", 0.6, **steps))
    full.train()
    assert full.sparsity_callback.method.events == [2, 6]
    n = full.masks.total
    assert sum(int(m.sum()) for m in full.masks.masks.values()) == keep_count(0.4, n)
    saved = json.loads((tmp_path / "run" / "checkpoint-3" / STATE_NAME).read_text())
    assert json.dumps([2]) in json.dumps(saved)  # the method's state is in the checkpoint

    resumed = make_trainer("bert", sparse_args(tmp_path / "run", "two_step", 0.6, **steps))
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-3"))
    assert resumed.sparsity_callback.method.events == [2, 6]  # step 2 restored, not pruned again
    for name, mask in full.masks.masks.items():
        assert torch.equal(resumed.masks.masks[name], mask)
