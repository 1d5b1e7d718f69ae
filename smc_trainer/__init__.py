"""smc-trainer: SMC-Bench ("Sparsity May Cry", ICLR 2023) sparse training for Hugging Face models."""

from smc_trainer.arguments import DataArguments, ModelArguments, SparseTrainingArguments
from smc_trainer.hub import load_sparse_pretrained, save_sparse_pretrained
from smc_trainer.masks import MaskSet
from smc_trainer.methods import get_method_class, method_names, register_method
from smc_trainer.targets import find_targets
from smc_trainer.trainer import SparseTrainer
from smc_trainer.version import __version__

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
