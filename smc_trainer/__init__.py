"""smc-trainer: SMC-Bench ("Sparsity May Cry", ICLR 2023) sparse training for Hugging Face models.

`import smc_trainer` is cheap: the public names below resolve on first use (PEP 562 `__getattr__`, the
way transformers' own `__init__` defers its models), so a script that only needs the torch-only engine
(`smc_trainer.engine`) never pays for transformers, datasets or accelerate. The layers and their import
rule are in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from smc_trainer.version import __version__

# public name -> the module that defines it
_LAZY_NAMES: dict[str, str] = {
    "DataArguments": "smc_trainer.training.arguments",
    "ModelArguments": "smc_trainer.training.arguments",
    "SparseTrainingArguments": "smc_trainer.training.arguments",
    "SparseTrainer": "smc_trainer.training.trainer",
    "load_sparse_pretrained": "smc_trainer.release.hub",
    "save_sparse_pretrained": "smc_trainer.release.hub",
    "MaskSet": "smc_trainer.engine.masks",
    "find_targets": "smc_trainer.engine.targets",
    "get_method_class": "smc_trainer.methods",
    "method_names": "smc_trainer.methods",
    "register_method": "smc_trainer.methods",
}

__all__ = [
    "DataArguments",
    "MaskSet",
    "ModelArguments",
    "SparseTrainer",
    "SparseTrainingArguments",
    "find_targets",
    "get_method_class",
    "load_sparse_pretrained",
    "method_names",
    "register_method",
    "save_sparse_pretrained",
    "__version__",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    from smc_trainer.engine.masks import MaskSet
    from smc_trainer.engine.targets import find_targets
    from smc_trainer.methods import get_method_class, method_names, register_method
    from smc_trainer.release.hub import load_sparse_pretrained, save_sparse_pretrained
    from smc_trainer.training.arguments import DataArguments, ModelArguments, SparseTrainingArguments
    from smc_trainer.training.trainer import SparseTrainer


def __getattr__(name: str) -> Any:
    module = _LAZY_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'smc_trainer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES))
