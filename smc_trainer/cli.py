"""smc-trainer command line: sparse fine-tuning on SMC-Bench recipes.

The same command three ways: `python run_smc.py ...` (a thin wrapper at the repository root), `python -m
smc_trainer ...` and the `smc-train` console script.

  python run_smc.py                                  offline quickstart: a small real sweep + table + plot
  python run_smc.py --recipe csqa --sparse_method gmp --sparsity 0.59 [flags]   one run
  python run_smc.py config.yaml                      one run, flags from a JSON/YAML file
  python run_smc.py sweep --recipes csqa --methods omp_after,lth,gmp --sparsities paper [flags]
  python run_smc.py report LEDGER [--out DIR]        tables, CSV and plots from a results ledger
  python run_smc.py push RUN_DIR --hub_model_id ID   upload a finished run's sparse release to the Hub
  python run_smc.py convert-tape SRC DEST            TAPE's ProteinBert weights -> an HF BertModel folder (protein)

A user's mistake (bad flag value, missing file, unknown recipe, a model not available offline) ends with one
line `run_smc.py: error: <message>` and exit status 2; `--debug` (or SMC_DEBUG=1) shows the traceback.

The recipe (recipes/<name>.yaml) gives the task, checkpoint, dataset and the paper's
hyper-parameters as defaults; every flag overrides it. `python run_smc.py --help` lists the flags
of a run; `python run_smc.py sweep --help` adds the sweep's own.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys

import datasets
import transformers
from transformers import HfArgumentParser

from smc_trainer.errors import ExistingOutputError, UsageError
from smc_trainer.release.hub import prepare_push, push_sparse_folder
from smc_trainer.runs.config import parse_run_config
from smc_trainer.runs.run_config import RESULT_NAME, RunConfig, RunOutcome
from smc_trainer.tasks.loading import check_model_sources
from smc_trainer.training.checkpoints import (
    check_checkpoint_files,
    incomplete_detail,
    last_complete_checkpoint,
    resolve_resume_checkpoint,
)

logger = transformers.utils.logging.get_logger(__name__)

QUICKSTART = ["--recipes", "quickstart"]
INTERRUPTED = ("interrupted (Ctrl-C); finished runs (ledger records, run folders) and complete checkpoints are kept: "
               "rerun the same command to continue where it stopped")


def setup_logging(level: int, library_level: int | None = None) -> None:
    """smc_trainer (this module included) logs at `level`; transformers/datasets at `library_level` (default: the
    same)."""
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
                        datefmt="%m/%d/%Y %H:%M:%S", handlers=[logging.StreamHandler(sys.stdout)], force=True)
    logging.getLogger("smc_trainer").setLevel(level)
    library_level = level if library_level is None else library_level
    datasets.utils.logging.set_verbosity(library_level)
    transformers.utils.logging.set_verbosity(library_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


# ---- one run -------------------------------------------------------------------------------------


def check_output_dir(config: RunConfig) -> None:
    """Never train over a user's files: --output_dir must be a folder we can write; a non-empty one must hold
    a complete checkpoint to resume (with readable weights and masks) and no finished run; an explicit
    --resume_from_checkpoint must be complete (smc_trainer.training.checkpoints)."""
    args = config.training_args
    out = args.output_dir
    check_writable_dir(out)
    if args.resume_from_checkpoint:
        check_checkpoint_files(resolve_resume_checkpoint(args.resume_from_checkpoint, out))
        return
    if args.overwrite_output_dir or not os.path.isdir(out) or not os.listdir(out):
        return
    if holds_stages(out):  # an interrupted LTH/LRR chain or CV run: the pipeline reuses its finished stages
        return
    if os.path.isfile(os.path.join(out, RESULT_NAME)):
        raise ExistingOutputError(f"--output_dir {out} already holds a finished run ({RESULT_NAME}); rerunning "
                                  "would overwrite its model and metrics: choose another --output_dir, or pass "
                                  "--overwrite_output_dir to train it again")
    last = last_complete_checkpoint(out)
    if last is None:
        broken = incomplete_detail(out)
        detail = f" (only incomplete ones, left in place: {broken})" if broken else ""
        raise UsageError(f"output directory {out!r} exists, is not empty and holds no complete checkpoint to resume"
                         f"{detail}; choose another --output_dir, remove it, or pass --overwrite_output_dir")
    check_checkpoint_files(last, f"resuming {out}")


def check_writable_dir(out: str) -> None:
    """--output_dir is a folder, or can become one: not a file, under no file, in a folder we may write."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ExistingOutputError(f"--output_dir {out} is a file, not a folder; choose a folder path")
    existing = os.path.abspath(out)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"--output_dir {out} lies under {existing}, which is a file; choose a folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--output_dir {out}: {existing} is not writable; choose a folder you can write")


def holds_stages(out: str) -> bool:
    """Whether `out` holds the per-round (`round-XX`) or per-fold (`fold-K`) folders of a multi-stage run."""
    return any(re.fullmatch(r"(round-\d+|fold-\d+)", name) and os.path.isdir(os.path.join(out, name))
               for name in os.listdir(out))


def single_run(argv: list[str]) -> dict[str, float]:
    """Run one method at one sparsity with every stage it needs; returns the final metrics."""
    from smc_trainer.runs import pipeline

    config = parse_run_config(argv, description=__doc__)
    args = config.training_args
    setup_logging(args.get_process_log_level())
    logger.info(f"Recipe {config.recipe.name}: {config.recipe.description}")
    check_output_dir(config)
    check_model_sources(config.model_args)  # a missing folder or corrupt weights fail now, not mid-load
    repo_id = prepare_push(args)  # before training: bad Hub flags or tokens fail now, not after hours
    outcomes = pipeline.run(config)
    if repo_id is not None:
        folder = final_run_dir(config, outcomes)
        push_sparse_folder(folder, repo_id, token=args.hub_token, create=False, revision=args.hub_revision)
        logger.warning(f"Pushed {folder} to https://huggingface.co/{repo_id}")
    if args.ledger and args.process_index == 0:  # one ledger row per run, not one per process
        record_outcomes(config, outcomes)
    final = outcomes[-1]
    if args.process_index == 0:  # one summary, not one per process
        summarize(config, final)
    return {**final.metrics, "sparsity/overall": final.measured_sparsity}


def final_run_dir(config: RunConfig, outcomes: list[RunOutcome]) -> str:
    """The folder holding the run the user asked for: the last LTH/LRR round, else --output_dir."""
    from smc_trainer.methods import get_method_class

    if get_method_class(config.training_args.sparse_method).phase == "iterative":
        return outcomes[-1].output_dir
    return config.training_args.output_dir


def record_outcomes(config: RunConfig, outcomes: list[RunOutcome]) -> None:
    from smc_trainer.runs.ledger import Ledger
    from smc_trainer.runs.sweep import make_record, run_key

    ledger = Ledger(config.training_args.ledger)
    done = ledger.done_keys()
    for outcome in outcomes:
        run_config = config.with_training(sparsity=outcome.target_sparsity)
        key = run_key(run_config)
        if key not in done:
            ledger.append(make_record(run_config, outcome, key))


def summarize(config: RunConfig, outcome: RunOutcome) -> None:
    """The run's one-line summary, on stdout: what the command exists to show, not a log line."""
    metric, recipe = config.recipe.metric, config.recipe
    names = [metric, *(f"{subset}_{metric}" for subset in recipe.subsets)]  # RACE: middle and high as well
    names += [] if metric == "perplexity" else ["perplexity"]  # a causal LM's perplexity beside its task metric
    shown = {f"{split}_{name}" for split in ("eval", "test") for name in names}
    scores = ", ".join(f"{k} {v:.4f}" for k, v in outcome.metrics.items() if k in shown)
    chance = f" (chance {recipe.chance_level:g})" if recipe.chance_level is not None else ""
    print(f"Done: {recipe.name} with {outcome.model or 'the recipe model'}: {outcome.method} at target "
          f"sparsity {outcome.target_sparsity:g} (measured {outcome.measured_sparsity:.4f}); "
          f"{scores or 'no evaluation split'}{chance}. Outputs in {outcome.output_dir}", flush=True)


# ---- sweeps and reports --------------------------------------------------------------------------


def sweep_command(argv: list[str]) -> dict[str, float]:
    """`run_smc.py sweep`: the sweep's own flags, then any run flag applied to every run."""
    from smc_trainer.runs.config import make_parser
    from smc_trainer.runs.executors import ExecutorArguments
    from smc_trainer.runs.help_groups import print_help
    from smc_trainer.runs.sweep import SweepArguments, run_sweep

    if "-h" in argv or "--help" in argv or "--help-all" in argv:
        HfArgumentParser((SweepArguments, ExecutorArguments),
                         description="Sweep flags (any run flag may follow):").print_help()
        print_help(make_parser(argv=argv), full="--help-all" in argv)
        return {}
    parser = HfArgumentParser((SweepArguments, ExecutorArguments))
    sweep_args, executor_args, run_argv = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    if make_parser(argv=run_argv).parse_known_args(run_argv)[0].push_to_hub:
        raise UsageError("--push_to_hub uploads one run and a sweep holds many; push the run you want after the "
                         "sweep with `python run_smc.py push SWEEP_DIR/runs/... --hub_model_id ...`")
    if not any(a.startswith("--disable_tqdm") for a in run_argv):
        run_argv += ["--disable_tqdm", "false"]
    setup_logging(logging.INFO, library_level=logging.WARNING)
    appended = run_sweep(sweep_args, run_argv, executor_args)
    if sweep_args.dry_run:
        return {}
    paths = report_to(sweep_args.ledger_path(), os.path.join(sweep_args.sweep_dir, "report"))
    logger.info(f"{len(appended)} new run(s) recorded in {sweep_args.ledger_path()}")
    return {"new_runs": float(len(appended)), "reports": float(len(paths.get("png", [])))}


def report_to(ledger_path: str, out_dir: str, split: str = "auto", reference: str = "auto") -> dict[str, list[str]]:
    """Write the report and print its tables to stdout (what the command is for: not a log line)."""
    from smc_trainer.runs.report import write_report

    paths = write_report(ledger_path, out_dir, split=split, reference=reference)
    for md in paths.get("markdown", []):
        with open(md, encoding="utf-8") as fh:
            print(fh.read(), flush=True)
    print(f"report written: {', '.join(p for ps in paths.values() for p in ps)}", flush=True)
    return paths


def report_command(argv: list[str]) -> dict[str, float]:
    from smc_trainer.runs.report_reference import REFERENCE_HELP, REFERENCES

    parser = argparse.ArgumentParser(prog="run_smc.py report", description="Tables, CSV and plots from a ledger.")
    parser.add_argument("ledger", help="path of a results ledger (JSON lines) written by a sweep or --ledger")
    parser.add_argument("--out", default=None, help="output folder (default: LEDGER's folder/report)")
    parser.add_argument("--split", default="auto", help="auto (test if present, else validation), eval or test")
    parser.add_argument("--reference", default="auto", choices=REFERENCES, help=REFERENCE_HELP)
    ns = parser.parse_args(argv)
    setup_logging(logging.INFO, library_level=logging.WARNING)
    out = ns.out or os.path.join(os.path.dirname(os.path.abspath(ns.ledger)), "report")
    paths = report_to(ns.ledger, out, split=ns.split, reference=ns.reference)
    return {"reports": float(len(paths.get("png", [])))}


def push_command(argv: list[str]) -> dict[str, float]:
    """`run_smc.py push RUN_DIR --hub_model_id ID`: upload a finished run's sparse release (e.g. one run of a sweep)."""
    parser = argparse.ArgumentParser(prog="run_smc.py push", description="Upload a finished run's sparse release.")
    parser.add_argument("run_dir", help="a run's --output_dir (for LTH/LRR: its round-XX folder)")
    parser.add_argument("--hub_model_id", required=True, help="repository to create or update, e.g. you/model-name")
    parser.add_argument("--hub_token", default=None, help="write token (default: HF_TOKEN or the cached login)")
    parser.add_argument("--hub_private_repo", action="store_true", help="create the repository as private")
    parser.add_argument("--hub_revision", default=None, help="branch to push to (default: main)")
    ns = parser.parse_args(argv)
    setup_logging(logging.INFO, library_level=logging.WARNING)
    commit = push_sparse_folder(ns.run_dir, ns.hub_model_id, token=ns.hub_token, private=ns.hub_private_repo,
                                revision=ns.hub_revision)
    logger.warning(f"Pushed {ns.run_dir} to {getattr(commit, 'repo_url', ns.hub_model_id)}")
    return {"pushed": 1.0}


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
    if argv[0] == "push":
        return push_command(argv[1:])
    if argv[0] == "convert-tape":
        from smc_trainer.tasks.protein.tape_convert import convert_tape_command

        setup_logging(logging.INFO, library_level=logging.WARNING)
        return convert_tape_command(argv[1:])
    return single_run(argv)


def cli(argv: list[str] | None = None) -> None:
    """The command line: `main`, with a user's mistake (`UsageError`) printed as one `error:` line, exit 2, and
    Ctrl-C as one line saying how to continue, exit 130.

    Anything else is a bug and keeps its traceback. `--debug` (anywhere) or SMC_DEBUG=1 re-raises user
    errors too."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("SMC_DEBUG", "").lower() not in ("", "0", "false")
    argv = [a for a in argv if a != "--debug"]
    try:
        main(argv)
    except UsageError as err:
        if debug:
            raise
        message = " ".join(str(err).split())  # one line, as argparse prints its errors
        sys.stderr.write(f"run_smc.py: error: {message}\n")
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        if debug:
            raise
        sys.stderr.write(f"run_smc.py: error: {INTERRUPTED}\n")
        raise SystemExit(130) from None  # 128 + SIGINT, as shells report it


if __name__ == "__main__":
    cli()
