"""The causal-LM family's evaluation (`TaskBundle.evaluate`): the task metric and the perplexity of one split.

The pipeline hands it the model as trained (a PeftModel under `--peft lora`, whose masked adapters are part of the
forward pass) and a split's `ChoiceSet` / `GenerationSet` (or a dict of them, one per named subset: RACE middle and
high). Multiple choice reports `<split>_accuracy` and `<split>_accuracy_norm` (lm-evaluation-harness's acc and
acc_norm), arithmetic `<split>_accuracy` with `<split>_correct` / `<split>_total` (so cross-validation folds pool by
count), and every split `<split>_perplexity` on `--perplexity_text` (its validation split for `eval`, its test
split for `test`; C4's validation shard and a local file serve both).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from smc_trainer.tasks.causal_lm.data import ChoiceSet, GenerationSet

TEXT_SPLITS = {"eval": "validation", "test": "test"}  # our split prefix -> the text corpus's split
POOLED = ("accuracy", "accuracy_norm")


@dataclass
class CausalLmEvaluator:
    """Scores one split with the `scoring` functions; texts for the perplexity are loaded once per split."""

    tokenizer: Any
    batch_size: int = 8
    max_new_tokens: int = 32
    perplexity_text: str | None = "wikitext2"
    perplexity_seq_len: int = 2048
    progress: bool = True
    _texts: dict[str, str] = field(default_factory=dict, repr=False)

    def __call__(self, model: Any, dataset: Any, split: str) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if isinstance(dataset, Mapping):
            for name, part in dataset.items():
                metrics.update(self.score(model, part, f"{split}_{name}"))
            metrics.update(pooled(metrics, split, list(dataset)))
        else:
            metrics.update(self.score(model, dataset, split))
        if self.perplexity_text is not None:
            metrics[f"{split}_perplexity"] = self.perplexity(model, split)
        return metrics

    def score(self, model: Any, part: Any, prefix: str) -> dict[str, float]:
        """The task metric of one set, prefixed; nothing for a split without task rows."""
        import smc_trainer.tasks.causal_lm.scoring as scoring

        if isinstance(part, ChoiceSet):
            result = scoring.score_choices(model, self.tokenizer, part.requests, batch_size=self.batch_size,
                                           progress=self.progress)
        elif isinstance(part, GenerationSet):
            # the module's generate_answers, looked up now (a test may stand in a stub for the generation)
            result = scoring.score_generation(model, self.tokenizer, part.prompts, part.answers,
                                              max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                                              generate=scoring.generate_answers, progress=self.progress)
        else:
            return {}
        return {**{f"{prefix}_{k}": float(v) for k, v in result.items()}, f"{prefix}_samples": float(len(part))}

    def perplexity(self, model: Any, split: str) -> float:
        import smc_trainer.tasks.causal_lm.scoring as scoring
        from smc_trainer.tasks.causal_lm.text_data import load_text

        if split not in self._texts:
            self._texts[split] = load_text(self.perplexity_text, text_split(self.perplexity_text, split))
        return scoring.perplexity(model, self.tokenizer, self._texts[split], seq_len=self.perplexity_seq_len,
                                  batch_size=1, progress=self.progress)


def text_split(source: str, split: str) -> str:
    """The corpus split a run's split is scored on: validation for eval, test for test; C4 has no test split, its
    validation shard serves both (SparseGPT's C4 perplexity is on validation too)."""
    name = TEXT_SPLITS.get(split, split)
    return "validation" if source == "c4" else name


def pooled(metrics: Mapping[str, float], split: str, subsets: list[str]) -> dict[str, float]:
    """`<split>_accuracy` and `<split>_accuracy_norm` over the examples of every subset together (RACE: M + H),
    weighted by each subset's size."""
    sizes = {s: metrics.get(f"{split}_{s}_samples", 0.0) for s in subsets}
    total = sum(sizes.values())
    if not total:
        return {}
    out = {f"{split}_samples": total}
    for name in POOLED:
        keys = [f"{split}_{s}_{name}" for s in subsets]
        if all(k in metrics for k in keys):
            out[f"{split}_{name}"] = sum(metrics[k] * sizes[s] for k, s in zip(keys, subsets)) / total
    return out


__all__ = ["CausalLmEvaluator", "TEXT_SPLITS", "pooled", "text_split"]
