"""The method and what it prunes: --sparse_method, --sparsity, --distribution, the prunable set; SNIP's flag."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from smc_trainer.engine.criteria.snip import SnipConfig
from smc_trainer.engine.distributions import DISTRIBUTIONS
from smc_trainer.errors import UsageError
from smc_trainer.training.arguments.common import _choices_error
from smc_trainer.training.arguments.generated import flag_mixin
from smc_trainer.training.arguments.roles import declare


@dataclass
class MethodArguments:
    """Which method prunes, how far, how the sparsity is spread over layers, and which weights are prunable."""

    help_group: ClassVar[str] = "Method, sparsity and prunable set"

    sparse_method: str = declare(field(
        default="dense",
        metadata={
            "help": "Sparse algorithm: dense, omp_after, random_after, lth, lrr, omp_before, random_before, snip, "
            "gmp, rigl, set; wanda_before/after and sparsegpt_before/after are omp_before/after with --criterion "
            "wanda/sparsegpt (see README's method table)."
        },
    ), key="run")
    sparsity: float = declare(field(
        default=0.0,
        metadata={"help": "Target fraction of prunable weights set to zero, in [0, 1). The paper grid is 1-0.8^k."},
    ), key="run")
    distribution: str = declare(field(
        default="global",
        metadata={"choices": DISTRIBUTIONS,
            "help": "How sparsity is spread over layers: global (one threshold over all prunable weights, as the "
            "paper), uniform (same sparsity per layer), erk (Erdos-Renyi-Kernel) or owl (outlier-weighted: layers "
            "with more activation outliers keep more; --criterion wanda or sparsegpt only, see --owl_threshold/"
            "--owl_lambda)."
        },
    ), key="run", dense_reset=True)
    prune_embeddings: bool = declare(field(
        default=True, metadata={"help": "Include embedding matrices in the prunable set (the paper does). A decoder LM "
                             "(*ForCausalLM, GPT2LMHeadModel) keeps its embeddings dense by default, as Wanda and "
                             "SparseGPT: name them in --prune_include to prune them."}
    ), key="run")
    prune_heads: bool = declare(field(
        default=True, metadata={"help": "Include the task head (weights outside the base model) (the paper does). A "
                             "decoder LM (*ForCausalLM, GPT2LMHeadModel) prunes only its decoder blocks' linears by "
                             "default, keeping lm_head and the embeddings dense (as Wanda and SparseGPT); opt lm_head "
                             "in by naming it: --prune_include 'lm_head|layers' (GPT-2's lm_head is its tied wte: "
                             "'wte|\\.h\\.')."}
    ), key="run")
    prune_include: str | None = declare(field(
        default=None, metadata={"help": "Regex: only parameters whose name matches are prunable (re.search). On a "
                             "decoder LM it also opts in the weights outside the decoder blocks that it names "
                             "(lm_head, embeddings), which are dense by default."}
    ), key="run")
    prune_exclude: str | None = declare(field(
        default=None, metadata={"help": "Regex: parameters whose name matches are never pruned (re.search)."}
    ), key="run")
    prune_modules: str | None = declare(field(
        default=None,
        metadata={
            "help": "Only these linears of the transformer layers are prunable (BERT/RoBERTa/ESM names): a combination "
            "of q, k, v, o (attention) and ffn, e.g. qkvo_ffn, qkv, qk (the paper's Table 1). Applied together with "
            "--prune_include/--prune_exclude."
        },
    ), key="run")

    def _check_sparsity_and_distribution(self) -> None:
        """The shared sparsity settings (--sparsity, --distribution, --sparsity_pattern, OWL's), in flag words."""
        from smc_trainer.engine.sparsity import SparsityConfig

        SparsityConfig.from_flags(self).validate()

    def _check_sparse_target(self, method) -> None:
        """A sparse method at --sparsity 0 would train a dense model under the method's name: refuse it, as
        --sparse_method dense refuses a sparsity."""
        if method.phase != "dense" and self.sparsity == 0.0:
            raise UsageError(f"--sparse_method {self.sparse_method} at --sparsity 0 prunes nothing: its run would be "
                             "a dense model labelled as the method; pass --sparsity in (0, 1), or --sparse_method "
                             "dense for the dense baseline")

    def _check_method_and_targets(self) -> None:
        """--sparse_method names a registered method; --prune_modules and the regexes parse."""
        from smc_trainer.engine.module_groups import parse_module_group
        from smc_trainer.methods import method_names

        if self.sparse_method not in method_names():
            raise _choices_error("sparse_method", self.sparse_method, method_names())
        if self.prune_modules is not None:
            parse_module_group(self.prune_modules)
        for flag in ("prune_include", "prune_exclude"):
            pattern = getattr(self, flag)
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise UsageError(f"--{flag} is not a valid regular expression: {pattern!r} ({err})") from None

    def _check_no_training(self, method) -> None:
        """`--max_steps 0`: prune and evaluate without training, which only methods that prune once before
        training mean something with (before: the pretrained model; after: the cached dense fine-tune)."""
        if self.max_steps != 0 or method.phase in ("dense", "before", "after"):
            return
        from smc_trainer.methods import get_method_class, method_names

        able = [n for n in method_names() if get_method_class(n).phase in ("before", "after")]
        raise UsageError(f"--max_steps 0 prunes once and evaluates without training; --sparse_method "
                         f"{self.sparse_method} ({method.phase}) prunes during training or between retraining "
                         f"rounds, which never happen then; use one of {', '.join(able)}")


# SNIP's flag, generated from its criterion's config
SnipArguments = flag_mixin(SnipConfig, "SnipArguments", module=__name__)
