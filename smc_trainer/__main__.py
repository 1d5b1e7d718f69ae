"""`python -m smc_trainer ...`: the command line (smc_trainer.cli)."""

from smc_trainer.cli import cli

if __name__ == "__main__":
    cli()
