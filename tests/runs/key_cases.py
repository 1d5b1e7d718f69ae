"""The configurations whose keys are pinned: every recipe x every method, method preset and a few variant axes.

`record()` computes, for each case, the run key (ledger rows), the dense-cache key of its dense stage and the
fingerprint hash the sweep's run folders use. `tests/runs/data/keys.json` holds the values recorded before the
per-method configs existed (`python tests/runs/key_cases.py` rewrites it: only do that on purpose, since every
ledger and dense cache written so far was keyed by those values).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

RECORDING = Path(__file__).parent / "data" / "keys.json"

# (name, extra flags): variants along the axes, hyper-parameters of methods and criteria, training-wide flags
AXES: dict[str, list[str]] = {
    "plain": [],
    "distribution_erk": ["--distribution", "erk"],
    "seed_7": ["--seed", "7"],
}
METHOD_AXES: dict[str, dict[str, list[str]]] = {
    "gmp": {"movement": ["--criterion", "movement"], "initial": ["--gmp_initial_fraction", "0.5"],
            "window": ["--gmp_window_per_halving", "0.1"], "start": ["--gmp_start", "0.2"],
            "kd": ["--distill_teacher", "dense"], "lora": ["--peft", "lora", "--lora_r", "4"],
            "rewind": ["--lr_rewind", "true"], "freq": ["--prune_frequency", "7"]},
    "rigl": {"snip_init": ["--init_method", "snip"], "drop": ["--drop_fraction", "0.3"],
             "interval": ["--update_interval", "9"], "floor": ["--drop_fraction_floor", "0.005"]},
    "set": {"random_init": ["--init_method", "random_before"]},
    "lth": {"rate": ["--imp_rate", "0.3"], "pattern": ["--sparsity", "0.5", "--sparsity_pattern", "2:4"]},
    "lrr": {"rate": ["--imp_rate", "0.25"]},
    "omp_after": {"obert": ["--criterion", "obert", "--obert_block_size", "4", "--obert_num_grads", "8"],
                  "wanda": ["--criterion", "wanda", "--wanda_compare", "layer", "--distribution", "global"],
                  "owl": ["--criterion", "wanda", "--distribution", "owl", "--owl_lambda", "0.1"],
                  "nm": ["--sparsity", "0.5", "--sparsity_pattern", "2:4"],
                  "sgpt_layer": ["--criterion", "sparsegpt", "--calibration_memory", "layer"]},
    "omp_before": {"uniform": ["--distribution", "uniform"], "qk": ["--prune_modules", "qk"]},
    "snip": {"batches": ["--snip_batches", "3"]},
    "sparsegpt_before": {"damp": ["--sparsegpt_dampening", "0.02", "--sparsegpt_blocksize", "64"]},
}


def _cases(recipes: list[str], methods: list[str]) -> list[tuple[str, list[str]]]:
    cases = []
    for recipe in recipes:
        for method in methods:
            sparsity = [] if method == "dense" else ["--sparsity", "0.36"]
            for axis, flags in {**AXES, **METHOD_AXES.get(method, {})}.items():
                if method == "dense" and axis == "distribution_erk":
                    continue
                argv = ["--recipe", recipe, "--sparse_method", method, *sparsity, *flags]
                cases.append((f"{recipe}/{method}/{axis}", argv))
    return cases


def record() -> dict[str, dict[str, str]]:
    """Every case's keys under the code as it is now."""
    from smc_trainer.errors import UsageError
    from smc_trainer.methods import METHODS
    from smc_trainer.runs.config import parse_run_config
    from smc_trainer.runs.dense_cache import DenseCache, config_fingerprint, fingerprint_hash
    from smc_trainer.runs.pipeline import dense_stage_config
    from smc_trainer.runs.presets import preset_names
    from smc_trainer.runs.recipes import available_recipes as recipe_names
    from smc_trainer.runs.sweep import run_key

    out: dict[str, dict[str, str]] = {}
    # the package's own methods (a plugin another test loaded is not pinned)
    methods = [name for name, cls in METHODS.items() if cls.__module__.startswith("smc_trainer.")]
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv in _cases(recipe_names(), methods + preset_names()):
            try:
                config = parse_run_config([*argv, "--output_dir", os.path.join(tmp, "run")])
            except UsageError:  # a pair the recipe refuses (e.g. wanda where embeddings are prunable)
                continue
            dense = dense_stage_config(config)
            out[name] = {
                "run_key": run_key(config),
                "dense_key": DenseCache(tmp).key(dense),
                "fingerprint": fingerprint_hash(config_fingerprint(config, include_sparse=True)),
            }
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    keys = record()
    RECORDING.write_text(json.dumps(keys, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{len(keys)} cases written to {RECORDING}")
