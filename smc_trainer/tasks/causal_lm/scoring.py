"""Scoring a causal LM without a Trainer: choice log-likelihoods, greedy answers, perplexity.

The conventions are lm-evaluation-harness's (`HFLM.loglikelihood`, `generate_until`), so that numbers compare:
a continuation's tokens are those of `context + continuation` after the context's own tokens (trailing
whitespace of the context moved to the continuation first); the tokenizer's leading special tokens (Llama's BOS)
come first when the tokenizer adds them; inputs are cut from the left to the model's positions. Requests are
batched longest first with padding on the tokenizer's side, and explicit position ids keep left padding exact.
Log-softmax runs in float32 whatever the model's dtype. Perplexity follows SparseGPT / Wanda: non-overlapping
windows of `seq_len` tokens over the whole tokenized text, the tail dropped.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from smc_trainer.errors import UsageError
from smc_trainer.tasks.arithmetic.equations import is_correct

FALLBACK_POSITIONS = 2048
"""Window of a model whose config names no maximum length (lm-eval's default max_length)."""


@dataclass(frozen=True)
class ChoiceRequest:
    """One multiple-choice question: per choice a (context, continuation); only the continuation's tokens are scored."""

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    label: int


# ---- tokens -------------------------------------------------------------------------------------


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts before a text when it adds special tokens (Llama's and Mistral's BOS, OPT's
    `</s>`; none for GPT-2 or Qwen2), read from what it does to a probe text, not from its name."""
    plain = _encode(tokenizer, "a")
    full = list(tokenizer("a", verbose=False)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start]
    return []


def max_positions(model, tokenizer) -> int:
    """The longest input the model takes: its config's position count, else the tokenizer's limit, else 2048."""
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 1_000_000_000 else FALLBACK_POSITIONS


def pair_tokens(tokenizer, context: str, continuation: str, prefix: Sequence[int]) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) of one pair, as lm-eval's `_encode_pair`: trailing whitespace of the
    context moves to the continuation, and the continuation is the whole's tokens after the context's."""
    stripped = context.rstrip()
    context, continuation = stripped, context[len(stripped):] + continuation
    context_ids = _encode(tokenizer, context)
    continuation_ids = _encode(tokenizer, context + continuation)[len(context_ids):]
    context_ids = list(prefix) + context_ids
    if not context_ids:  # nothing to condition the first token on: lm-eval's prefix token (BOS, else EOS)
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise UsageError("an empty context needs a BOS or EOS token to start from; the tokenizer has neither")
        context_ids = [start]
    return context_ids, continuation_ids


# ---- batching -----------------------------------------------------------------------------------


def _pad_id(tokenizer) -> int:
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    return 0  # masked out anyway


def _pad(rows: Sequence[Sequence[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of `rows` padded to the longest on `side` ("left" or "right")."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def _batches(order: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    for start in range(0, len(order), batch_size):
        yield list(order[start:start + batch_size])


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size must be a positive integer; got {batch_size!r}")


def _device(model) -> torch.device:
    return model.get_input_embeddings().weight.device


@contextlib.contextmanager
def _eval_mode(model) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd while scoring; the model's train/eval state is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _forward_kwargs(model, mask: torch.Tensor, keep: int) -> dict:
    """Position ids from the mask (so left padding shifts nothing) and, where the model takes it, logits only for
    the last `keep` positions (a 128k vocabulary times every position is most of the memory otherwise)."""
    params = inspect.signature(model.forward).parameters
    passes_on = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())  # a PEFT wrapper's **kwargs
    kwargs = {"attention_mask": mask}
    if "position_ids" in params or passes_on:
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = keep
    return kwargs


# ---- log-likelihoods ----------------------------------------------------------------------------


def _window(tokenizer, pairs: Sequence[tuple[str, str]], limit: int) -> list[tuple[list[int], list[int]]]:
    """Per pair (model input ids, continuation ids): the whole sequence but its last token, cut from the left to
    `limit` tokens; every pair checked before the first forward pass."""
    prefix = special_prefix(tokenizer)
    out = []
    for index, (context, continuation) in enumerate(pairs):
        context_ids, continuation_ids = pair_tokens(tokenizer, context, continuation, prefix)
        if not continuation_ids:
            raise UsageError(f"pair {index}: the continuation {continuation!r} has no tokens to score")
        if len(continuation_ids) > limit:
            raise UsageError(f"pair {index}: the continuation has {len(continuation_ids)} tokens, more than the "
                             f"model's {limit} positions")
        out.append(((context_ids + continuation_ids)[-(limit + 1):][:-1], continuation_ids))
    return out


def loglikelihoods(model, tokenizer, pairs: Sequence[tuple[str, str]], *, batch_size: int = 8,
                   progress: bool = True) -> list[tuple[float, int]]:
    """Per (context, continuation): (sum of log p(continuation tokens | what precedes them), number of tokens)."""
    _check_batch_size(batch_size)
    windows = _window(tokenizer, pairs, max_positions(model, tokenizer))
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))  # longest first: out of memory early
    side = "left" if getattr(tokenizer, "padding_side", "right") == "left" else "right"
    results: list[tuple[float, int]] = [(0.0, 0)] * len(windows)
    device = _device(model)
    with _eval_mode(model), tqdm(total=len(windows), desc="log-likelihoods", disable=not progress) as bar:
        for batch in _batches(order, batch_size):
            ids, mask = _pad([windows[i][0] for i in batch], _pad_id(tokenizer), side)
            width = ids.shape[1]
            # per row, the position in the padded input of the logit that predicts its first continuation token
            starts = [(width - len(windows[i][0]) if side == "left" else 0) + len(windows[i][0]) - len(windows[i][1])
                      for i in batch]
            logits = model(input_ids=ids.to(device),
                           **_forward_kwargs(model, mask.to(device), width - min(starts))).logits
            shift = width - logits.shape[1]  # positions whose logits the model did not return
            for row, (start, i) in enumerate(zip(starts, batch)):
                target = windows[i][1]
                logprobs = logits[row, start - shift:start - shift + len(target)].float().log_softmax(-1)
                picked = logprobs.gather(-1, torch.tensor(target, device=logprobs.device)[:, None])
                results[i] = (float(picked.sum()), len(target))
            bar.update(len(batch))
    return results


# ---- multiple choice ----------------------------------------------------------------------------


def _norm_length(continuation: str) -> int:
    """UTF-8 bytes of the choice's text, without the separator space before it (lm-eval divides by the length of
    the choice, which excludes its target delimiter)."""
    return max(1, len(continuation.lstrip().encode("utf-8")))


def _check_requests(requests: Sequence[ChoiceRequest]) -> None:
    if not requests:
        raise UsageError("no multiple-choice requests to score")
    for index, request in enumerate(requests):
        n = len(request.continuations)
        if n < 1 or len(request.contexts) != n:
            raise UsageError(f"request {index}: needs one context per continuation (>= 1); got "
                             f"{len(request.contexts)} contexts and {n} continuations")
        if not 0 <= request.label < n:
            raise UsageError(f"request {index}: label must be in [0, {n}) to be scored; got {request.label} "
                             "(-1 is an unlabeled example: leave unlabeled splits out of evaluation)")


def score_choices(model, tokenizer, requests: Sequence[ChoiceRequest], *, batch_size: int = 8,
                  progress: bool = True) -> dict[str, float]:
    """lm-eval's acc (argmax of the summed log-likelihood) and acc_norm (argmax of the log-likelihood per UTF-8
    byte of the choice), over all requests; ties go to the first choice, as numpy's argmax."""
    _check_requests(requests)
    pairs = [(c, x) for r in requests for c, x in zip(r.contexts, r.continuations)]
    scores = iter(loglikelihoods(model, tokenizer, pairs, batch_size=batch_size, progress=progress))
    correct = correct_norm = 0
    for request in requests:
        lls = [next(scores)[0] for _ in request.continuations]
        normed = [ll / _norm_length(x) for ll, x in zip(lls, request.continuations)]
        correct += _argmax(lls) == request.label
        correct_norm += _argmax(normed) == request.label
    return {"accuracy": correct / len(requests), "accuracy_norm": correct_norm / len(requests)}


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


# ---- generation ---------------------------------------------------------------------------------


def _eos_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update([configured] if isinstance(configured, int) else (configured or []))
    return ids


def cut_generation(tokenizer, ids: Sequence[int], eos_ids: set[int]) -> str:
    """The text of generated `ids` up to the first EOS token, then up to the first newline."""
    ids = list(ids)
    end = next((k for k, token in enumerate(ids) if token in eos_ids), len(ids))
    text = tokenizer.decode(ids[:end], skip_special_tokens=True)
    return text.split("\n", 1)[0]


@contextlib.contextmanager
def _padding_side(tokenizer, side: str) -> Iterator[None]:
    before = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield
    finally:
        tokenizer.padding_side = before


def generate_answers(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 32, batch_size: int = 8,
                     progress: bool = True) -> list[str]:
    """Greedy continuations of `prompts` (batched with left padding), each cut at its first newline or EOS."""
    _check_batch_size(batch_size)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise UsageError(f"max_new_tokens must be a positive integer; got {max_new_tokens!r}")
    budget = max_positions(model, tokenizer) - max_new_tokens
    if budget < 1:
        raise UsageError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's "
                         f"{max_positions(model, tokenizer)} positions")
    prefix = special_prefix(tokenizer)
    encoded = [(prefix + _encode(tokenizer, p))[-budget:] for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    eos_ids, pad_id = _eos_ids(model, tokenizer), _pad_id(tokenizer)
    out = [""] * len(encoded)
    device = _device(model)
    with _eval_mode(model), _padding_side(tokenizer, "left"), \
            tqdm(total=len(encoded), desc="generating", disable=not progress) as bar:
        for batch in _batches(order, batch_size):
            inputs = tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt")
            generated = model.generate(input_ids=inputs["input_ids"].to(device),
                                       attention_mask=inputs["attention_mask"].to(device), do_sample=False,
                                       max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                                       stop_strings=["\n"], tokenizer=tokenizer)
            for row, i in zip(generated[:, inputs["input_ids"].shape[1]:].tolist(), batch):
                out[i] = cut_generation(tokenizer, row, eos_ids)
            bar.update(len(batch))
    return out


_NUMBER = r"-?(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
NUMBER = re.compile(rf"(?P<value>{_NUMBER})(?:\s*/\s*(?P<denominator>{_NUMBER}))?")


def parse_number(text: str) -> float | None:
    """The first number in `text`: 42, -3, 2.5, .5, 1,000 (thousands separators), 3/4 (a fraction: 0.75); None
    when there is none. A fraction over zero reads as its numerator."""
    match = NUMBER.search(text)
    if match is None:
        return None
    value = float(match.group("value").replace(",", ""))
    denominator = match.group("denominator")
    if denominator is not None and float(denominator.replace(",", "")) != 0:
        value /= float(denominator.replace(",", ""))
    return value if math.isfinite(value) else None


def score_generation(model, tokenizer, prompts: Sequence[str], answers: Sequence[float], *, max_new_tokens: int = 32,
                     batch_size: int = 8, generate: Callable[..., list[str]] = generate_answers,
                     progress: bool = True) -> dict[str, float]:
    """Answer accuracy of generated text: the first number of each generation, checked against the reference with
    the arithmetic task's test (|value - answer| < 1e-4); a generation without a number is wrong. `correct` and
    `total` come with it, so that folds pool exactly as the arithmetic metric's do."""
    if len(prompts) != len(answers) or not prompts:
        raise UsageError(f"need one answer per prompt (>= 1); got {len(prompts)} prompts and {len(answers)} answers")
    texts = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                     progress=progress)
    if len(texts) != len(prompts):
        raise UsageError(f"generate returned {len(texts)} texts for {len(prompts)} prompts")
    correct = sum(is_correct(parse_number(text), float(answer)) for text, answer in zip(texts, answers))
    return {"accuracy": correct / len(prompts), "correct": float(correct), "total": float(len(prompts))}


# ---- perplexity ---------------------------------------------------------------------------------


def perplexity(model, tokenizer, text: str, *, seq_len: int = 2048, batch_size: int = 1,
               max_windows: int | None = None, progress: bool = True) -> float:
    """exp(mean NLL) over every predicted token of `len // seq_len` non-overlapping windows of the tokenized text
    (the tail dropped), the first `max_windows` of them when given (SparseGPT's and Wanda's evaluation)."""
    _check_batch_size(batch_size)
    limit = max_positions(model, tokenizer)
    if not isinstance(seq_len, int) or not 2 <= seq_len <= limit:
        raise UsageError(f"seq_len must be an integer in [2, {limit}] (the model's positions); got {seq_len!r}")
    if max_windows is not None and (not isinstance(max_windows, int) or max_windows < 1):
        raise UsageError(f"max_windows must be a positive integer or None; got {max_windows!r}")
    ids = torch.tensor(special_prefix(tokenizer) + _encode(tokenizer, text), dtype=torch.long)
    n = len(ids) // seq_len if max_windows is None else min(len(ids) // seq_len, max_windows)
    if n == 0:
        raise UsageError(f"the text has {len(ids)} tokens, fewer than one window of seq_len {seq_len}")
    windows = ids[:n * seq_len].view(n, seq_len)
    total, device = 0.0, _device(model)
    with _eval_mode(model), tqdm(total=n, desc="perplexity", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            batch = windows[start:start + batch_size].to(device)
            logits = model(input_ids=batch).logits[:, :-1].float()
            total += float(torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"))
            bar.update(len(batch))
    return math.exp(total / (n * (seq_len - 1)))


__all__ = [
    "ChoiceRequest",
    "cut_generation",
    "generate_answers",
    "loglikelihoods",
    "max_positions",
    "pair_tokens",
    "parse_number",
    "perplexity",
    "score_choices",
    "score_generation",
    "special_prefix",
]
