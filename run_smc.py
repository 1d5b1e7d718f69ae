#!/usr/bin/env python
"""smc-trainer command line: sparse fine-tuning on SMC-Bench recipes.

  python run_smc.py                                  offline quickstart: a small real sweep + table + plot
  python run_smc.py --recipe csqa --sparse_method gmp --sparsity 0.59 [flags]   one run
  python run_smc.py config.yaml                      one run, flags from a JSON/YAML file
  python run_smc.py sweep --recipes csqa --methods omp_after,lth,gmp --sparsities paper [flags]
  python run_smc.py report LEDGER [--out DIR]        tables, CSV and plots from a results ledger

The recipe (recipes/<name>.yaml) gives the task, checkpoint, dataset and the paper's
hyper-parameters as defaults; every flag overrides it. `python run_smc.py --help` lists the flags
of a run; `python run_smc.py sweep --help` adds the sweep's own.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import datasets
import transformers
from transformers import HfArgumentParser
from transformers.trainer_utils import get_last_checkpoint

from smc_trainer.config import parse_run_config
from smc_trainer.pipeline import RunConfig, RunOutcome

logger = transformers.utils.logging.get_logger("run_smc")

QUICKSTART = ["--recipes", "quickstart"]


def setup_logging(level: int, library_level: int | None = None) -> None:
    """smc_trainer and run_smc log at `level`; transformers/datasets at `library_level` (default: the same)."""
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
                        datefmt="%m/%d/%Y %H:%M:%S", handlers=[logging.StreamHandler(sys.stdout)], force=True)
    for name in ("run_smc", "smc_trainer"):
        logging.getLogger(name).setLevel(level)
    library_level = level if library_level is None else library_level
    datasets.utils.logging.set_verbosity(library_level)
    transformers.utils.logging.set_verbosity(library_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


# ---- one run -------------------------------------------------------------------------------------


def check_output_dir(config: RunConfig) -> None:
    """Never train over a user's files: a non-empty output_dir must hold a checkpoint to resume."""
    args = config.training_args
    out = args.output_dir
    if args.overwrite_output_dir or args.resume_from_checkpoint or not os.path.isdir(out) or not os.listdir(out):
        return
    if get_last_checkpoint(out) is None:
        raise ValueError(f"output directory {out!r} exists, is not empty and holds no checkpoint to resume; "
                         "choose another --output_dir, remove it, or pass --overwrite_output_dir")


def single_run(argv: list[str]) -> dict[str, float]:
    """Run one method at one sparsity with every stage it needs; returns the final metrics."""
    from smc_trainer import pipeline

    config = parse_run_config(argv, description=__doc__)
    args = config.training_args
    setup_logging(args.get_process_log_level())
    logger.info(f"Recipe {config.recipe.name}: {config.recipe.description}")
    check_output_dir(config)
    outcomes = pipeline.run(config)
    if args.ledger:
        record_outcomes(config, outcomes)
    final = outcomes[-1]
    summarize(config, final)
    return {**final.metrics, "sparsity/overall": final.measured_sparsity}


def record_outcomes(config: RunConfig, outcomes: list[RunOutcome]) -> None:
    from smc_trainer.ledger import Ledger
    from smc_trainer.sweep import make_record, run_key

    ledger = Ledger(config.training_args.ledger)
    done = ledger.done_keys()
    for outcome in outcomes:
        run_config = config.with_training(sparsity=outcome.target_sparsity)
        key = run_key(run_config)
        if key not in done:
            ledger.append(make_record(run_config, outcome, key))


def summarize(config: RunConfig, outcome: RunOutcome) -> None:
    metric, recipe = config.recipe.metric, config.recipe
    scores = ", ".join(f"{k} {v:.4f}" for k, v in outcome.metrics.items() if k in (f"eval_{metric}", f"test_{metric}"))
    chance = f" (chance {recipe.chance_level:g})" if recipe.chance_level is not None else ""
    logger.warning(f"Done: {recipe.name} with {outcome.model or 'the recipe model'}: {outcome.method} at target "
                   f"sparsity {outcome.target_sparsity:g} (measured {outcome.measured_sparsity:.4f}); "
                   f"{scores or 'no evaluation split'}{chance}. Outputs in {outcome.output_dir}")


# ---- sweeps and reports --------------------------------------------------------------------------


def sweep_command(argv: list[str]) -> dict[str, float]:
    """`run_smc.py sweep`: the sweep's own flags, then any run flag applied to every run."""
    from smc_trainer.config import make_parser
    from smc_trainer.sweep import SweepArguments, run_sweep

    if "-h" in argv or "--help" in argv:
        HfArgumentParser(SweepArguments, description="Sweep flags (any run flag may follow):").print_help()
        make_parser().print_help()
        return {}
    sweep_args, run_argv = HfArgumentParser(SweepArguments).parse_args_into_dataclasses(
        argv, return_remaining_strings=True)
    if not any(a.startswith("--disable_tqdm") for a in run_argv):
        run_argv += ["--disable_tqdm", "false"]
    setup_logging(logging.INFO, library_level=logging.WARNING)
    appended = run_sweep(sweep_args, run_argv)
    if sweep_args.dry_run:
        return {}
    paths = report_to(sweep_args.ledger_path(), os.path.join(sweep_args.sweep_dir, "report"))
    logger.info(f"{len(appended)} new run(s) recorded in {sweep_args.ledger_path()}")
    return {"new_runs": float(len(appended)), "reports": float(len(paths.get("png", [])))}


def report_to(ledger_path: str, out_dir: str, split: str = "auto") -> dict[str, list[str]]:
    from smc_trainer.report import write_report

    paths = write_report(ledger_path, out_dir, split=split)
    for md in paths.get("markdown", []):
        with open(md, encoding="utf-8") as fh:
            logger.warning("\n" + fh.read())
    logger.warning(f"report written: {', '.join(p for ps in paths.values() for p in ps)}")
    return paths


def report_command(argv: list[str]) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="run_smc.py report", description="Tables, CSV and plots from a ledger.")
    parser.add_argument("ledger", help="path of a results ledger (JSON lines) written by a sweep or --ledger")
    parser.add_argument("--out", default=None, help="output folder (default: LEDGER's folder/report)")
    parser.add_argument("--split", default="auto", help="auto (test if present, else validation), eval or test")
    ns = parser.parse_args(argv)
    setup_logging(logging.INFO, library_level=logging.WARNING)
    out = ns.out or os.path.join(os.path.dirname(os.path.abspath(ns.ledger)), "report")
    paths = report_to(ns.ledger, out, split=ns.split)
    return {"reports": float(len(paths.get("png", [])))}


def main(argv: list[str] | None = None) -> dict[str, float]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv == ["--recipe", "quickstart"]:
        logger.warning("smc-trainer quickstart: a SMOKE-SCALE demo sweep (synthetic task, small model, CPU). "
                       "Its numbers show the machinery works; they are not SMC-Bench results.")
        return sweep_command(QUICKSTART)
    if argv[0] == "sweep":
        return sweep_command(argv[1:])
    if argv[0] == "report":
        return report_command(argv[1:])
    return single_run(argv)


if __name__ == "__main__":
    main()
