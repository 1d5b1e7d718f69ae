"""An encoder recipe given a causal LM (`--recipe csqa --model_name_or_path Qwen/Qwen2.5-0.5B`): refused with the
recipe that scores it (`--recipe llm_csqa`), once the model's config is read and before any weights load.

The encoder recipes put a new multiple-choice head or a GTS tree decoder on the checkpoint; a decoder LLM is
scored by the log-likelihood of each choice or by generating its answer instead, which is the causal_lm family.
"""

from __future__ import annotations

from typing import Any

from smc_trainer.errors import UsageError

TWIN_PREFIX = "llm_"
TWINS = ("csqa", "winogrande", "race", "mawps", "asdiv_a", "svamp")  # recipes/llm_<name>.yaml reads <name>'s data


def refuse_causal_lm(config: Any, model_args: Any, recipe: Any, task: str) -> None:
    """UsageError naming `--recipe llm_<name>` when `config` is a causal LM's (the `task` family cannot train it)."""
    from smc_trainer.tasks.causal_lm.loading import is_causal_lm

    if not is_causal_lm(config):
        return
    name = recipe.name if recipe is not None else None
    raise UsageError(f"--model_name_or_path {model_args.model_name_or_path!r} is a causal language model "
                     f"({config.model_type}); recipe {name!r} puts a new {task} head on an encoder. Score the "
                     f"causal LM on the same data with {twin_hint(name)} (docs/llm.md)")


def twin_hint(name: str | None) -> str:
    """`--recipe llm_<name>` for a recipe with a shipped twin, else the llm_* recipes."""
    if name in TWINS:
        return f"--recipe {TWIN_PREFIX}{name}"
    return f"one of the llm_* recipes ({', '.join(TWIN_PREFIX + t for t in TWINS)})"
