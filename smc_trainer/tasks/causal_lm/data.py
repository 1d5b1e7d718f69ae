"""What a causal-LM run trains, calibrates and evaluates on, as the pipeline and the Trainer hold it.

- training: (prompt, gold continuation) pairs tokenized exactly as the scorer tokenizes them (`scoring.pair_tokens`:
  lm-eval's split of a pair, the tokenizer's BOS first), labels -100 on the prompt tokens, so the causal-LM loss
  covers only the answer; or non-overlapping windows of a text with every token a label (`--train_text`);
- calibration: the windows of `--calibration_text` (`text_data.calibration_samples`) as a Dataset the
  SparseTrainer's calibration batches by `--per_device_eval_batch_size`;
- evaluation: the requests or prompts of a split (`ChoiceSet`, `GenerationSet`) that the family's evaluator scores;
  `PerplexityOnly` stands for a split with no task rows (the perplexity is the split's metric).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from datasets import Dataset
from transformers import DataCollatorForSeq2Seq

from smc_trainer.errors import UsageError

IGNORE_INDEX = -100  # transformers' causal-LM loss skips these labels


@dataclass(frozen=True)
class ChoiceSet:
    """The multiple-choice requests of one split (or subset), scored by the log-likelihood of each choice."""

    requests: Sequence[Any]

    def __len__(self) -> int:
        return len(self.requests)


@dataclass(frozen=True)
class GenerationSet:
    """Arithmetic prompts (few-shot header included) and the reference answers, scored by greedy generation."""

    prompts: Sequence[str]
    answers: Sequence[float]

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass(frozen=True)
class PerplexityOnly:
    """A split with no task rows: only `--perplexity_text` is scored on it."""

    def __len__(self) -> int:
        return 0


def pair_features(tokenizer: Any, context: str, continuation: str, prefix: Sequence[int],
                  max_length: int) -> dict[str, list[int]]:
    """input_ids / attention_mask / labels of one (prompt, continuation) pair: the scorer's tokens, labels only on
    the continuation; a pair longer than `max_length` loses prompt tokens after the special prefix (never answer
    tokens), and an answer that cannot fit is an error."""
    from smc_trainer.tasks.causal_lm.scoring import pair_tokens

    context_ids, continuation_ids = pair_tokens(tokenizer, context, continuation, prefix)
    if not continuation_ids:
        raise UsageError(f"the training answer {continuation!r} (after {context[-60:]!r}) has no tokens")
    keep = len(prefix) if list(context_ids[:len(prefix)]) == list(prefix) else 0
    room = max_length - keep - len(continuation_ids)
    if room < 0:
        raise UsageError(f"a training answer has {len(continuation_ids)} tokens, more than --max_seq_length "
                         f"{max_length} allows with the prompt's special tokens ({continuation[:80]!r}); raise "
                         "--max_seq_length")
    body = context_ids[keep:]
    context_ids = list(context_ids[:keep]) + (list(body[max(0, len(body) - room):]) if room else [])
    ids = context_ids + list(continuation_ids)
    return {"input_ids": ids, "attention_mask": [1] * len(ids),
            "labels": [IGNORE_INDEX] * len(context_ids) + list(continuation_ids)}


def tokenize_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int) -> Dataset:
    """The training pairs as a Dataset of input_ids / attention_mask / labels (prompt tokens -100)."""
    from smc_trainer.tasks.causal_lm.scoring import special_prefix

    prefix = special_prefix(tokenizer)
    rows = [pair_features(tokenizer, c, a, prefix, max_length) for c, a in pairs]
    return Dataset.from_dict({key: [row[key] for row in rows] for key in ("input_ids", "attention_mask", "labels")})


def text_windows(tokenizer: Any, text: str, seq_len: int) -> Dataset:
    """Non-overlapping windows of `seq_len` tokens of `text` (the tail dropped), every token a label: the plain
    language-model loss of `--train_text`."""
    ids = list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    n = len(ids) // seq_len
    if n == 0:
        raise UsageError(f"--train_text has {len(ids)} tokens, fewer than one --max_seq_length window of {seq_len}")
    windows = [ids[i * seq_len:(i + 1) * seq_len] for i in range(n)]
    return Dataset.from_dict({"input_ids": windows, "attention_mask": [[1] * seq_len for _ in windows],
                              "labels": [list(w) for w in windows]})


def calibration_dataset(samples: Sequence[dict[str, Any]]) -> Dataset:
    """`text_data.calibration_samples`' windows (tensors, one sample each) as a Dataset of token lists."""
    ids = [[int(i) for i in s["input_ids"].reshape(-1).tolist()] for s in samples]
    masks = [[int(m) for m in s["attention_mask"].reshape(-1).tolist()] if "attention_mask" in s else [1] * len(i)
             for s, i in zip(samples, ids)]
    return Dataset.from_dict({"input_ids": ids, "attention_mask": masks})


def empty_training_set() -> Dataset:
    """What a run that trains nothing holds as its training split (`--max_steps 0` with a criterion that reads no
    training batches): no rows are tokenized for it."""
    return Dataset.from_dict({"input_ids": [], "attention_mask": [], "labels": []})


def make_collator(tokenizer: Any, training_args: Any) -> DataCollatorForSeq2Seq:
    """Dynamic padding on the tokenizer's side, labels padded with -100 (transformers' public collator; it serves
    decoder-only models as well)."""
    half = training_args.fp16 or training_args.bf16
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, pad_to_multiple_of=8 if half else None)


__all__ = ["IGNORE_INDEX", "ChoiceSet", "GenerationSet", "PerplexityOnly", "calibration_dataset",
           "empty_training_set", "make_collator", "pair_features", "text_windows", "tokenize_pairs"]
