"""Runs: what a run is (`run_config`), recipes, parsing flags into a run (`config`), the multi-stage
pipeline with its dense cache and cross-validation folds, sweeps, the append-only ledger and the report.

The top layer of the package: it may import everything below it, and nothing imports it but `run_smc.py`.
"""
