#!/usr/bin/env python
"""`python run_smc.py ...`: the smc-trainer command line (`smc_trainer/cli.py`; also `python -m smc_trainer` and the
`smc-train` console script). `python run_smc.py --help` lists the flags."""

from smc_trainer.cli import QUICKSTART, check_output_dir, cli, main, setup_logging

__all__ = ["QUICKSTART", "check_output_dir", "cli", "main", "setup_logging"]

if __name__ == "__main__":
    cli()
