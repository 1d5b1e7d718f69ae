"""Causal-LM scoring and prompts: choice log-likelihoods equal to a hand computation on tiny Llama / Qwen2 / Mistral /
OPT / GPT-2 and independent of the batch size and the padding side, acc and acc_norm, WinoGrande's partial scoring,
greedy answers equal to unbatched `generate`, the answer parser and check, and windowed perplexity."""

from __future__ import annotations

import copy
import csv
import math
import random

import pytest
import torch
from datasets import Dataset
from llm_helpers import CAUSAL_ARCHS, byte_tokenizer, tiny_causal_lm
from tokenizers import processors
from transformers import PreTrainedTokenizerFast

from smc_trainer.errors import UsageError
from smc_trainer.tasks.arithmetic.equations import ANSWER_TOLERANCE
from smc_trainer.tasks.causal_lm import scoring
from smc_trainer.tasks.causal_lm.prompts import (
    TASK_KINDS,
    arithmetic_prompts,
    arithmetic_question,
    csqa_requests,
    race_requests,
    training_pairs,
    winogrande_requests,
)
from smc_trainer.tasks.causal_lm.scoring import (
    ChoiceRequest,
    cut_generation,
    generate_answers,
    loglikelihoods,
    pair_tokens,
    parse_number,
    perplexity,
    score_choices,
    score_generation,
    special_prefix,
)
from smc_trainer.tasks.multiple_choice_schemas import to_canonical

PAIRS = [
    ("Question: Where do fish live?\nAnswer:", " in the sea"),
    ("The cat sat on the ", "mat."),
    ("", "hello"),
    ("abc", "d"),
    ("Article: a short text about nothing at all, long enough to be the longest context here.\n\nWhy?", " because"),
    ("Zürich is in ", "Schweiz, naïve café"),
    ("x", " y z"),
]


def bos_tokenizer() -> PreTrainedTokenizerFast:
    """The byte tokenizer that adds `<s>` before every text, as Llama's does."""
    backend = copy.deepcopy(byte_tokenizer().backend_tokenizer)
    bos = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def encode(tokenizer, text: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))  # the byte tokenizer: one token per byte
    return ids


def hand_loglikelihood(model, tokenizer, context: str, continuation: str, bos: bool = False) -> float:
    """The continuation's log-probability from one unbatched forward pass over the whole sequence, by indexing."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    start = [tokenizer.bos_token_id] if bos or not context else []
    context_ids = start + encode(tokenizer, context)
    full = context_ids + encode(tokenizer, continuation)
    with torch.no_grad():
        logprobs = model(torch.tensor([full])).logits[0].float().log_softmax(-1)
    return sum(float(logprobs[j - 1, full[j]]) for j in range(len(context_ids), len(full)))


# ---- tokens ---------------------------------------------------------------------------------------


def test_pair_tokens_move_the_contexts_trailing_space_to_the_continuation():
    tokenizer = byte_tokenizer()
    context_ids, continuation_ids = pair_tokens(tokenizer, "Answer: ", "yes", [])
    assert context_ids == encode(tokenizer, "Answer:")
    assert continuation_ids == encode(tokenizer, " yes")


def test_special_prefix_is_read_from_the_tokenizer():
    assert special_prefix(byte_tokenizer()) == []
    tokenizer = bos_tokenizer()
    assert special_prefix(tokenizer) == [tokenizer.bos_token_id]
    context_ids, _ = pair_tokens(tokenizer, "ab", "c", special_prefix(tokenizer))
    assert context_ids == [tokenizer.bos_token_id, *encode(tokenizer, "ab")]


# ---- log-likelihoods --------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", CAUSAL_ARCHS)
def test_loglikelihoods_equal_a_hand_computation(arch):
    model, tokenizer = tiny_causal_lm(arch), byte_tokenizer()
    got = loglikelihoods(model, tokenizer, PAIRS, batch_size=3, progress=False)
    for (context, continuation), (ll, n) in zip(PAIRS, got):
        moved = len(context) - len(context.rstrip())
        assert n == len((context[len(context) - moved:] + continuation).encode("utf-8"))
        assert ll == pytest.approx(hand_loglikelihood(model, tokenizer, context, continuation), abs=1e-4)


def test_loglikelihoods_prepend_the_tokenizers_bos():
    model, tokenizer = tiny_causal_lm("llama"), bos_tokenizer()
    got = loglikelihoods(model, tokenizer, PAIRS[:3], batch_size=2, progress=False)
    for (context, continuation), (ll, _) in zip(PAIRS[:3], got):
        assert ll == pytest.approx(hand_loglikelihood(model, tokenizer, context, continuation, bos=True), abs=1e-4)
    without = loglikelihoods(model, byte_tokenizer(), PAIRS[:1], progress=False)[0][0]
    assert abs(got[0][0] - without) > 1e-3  # the BOS really is in the input


@pytest.mark.parametrize("arch", CAUSAL_ARCHS)
def test_loglikelihoods_do_not_depend_on_batch_size_or_padding_side(arch):
    model, tokenizer = tiny_causal_lm(arch), byte_tokenizer()
    one = loglikelihoods(model, tokenizer, PAIRS, batch_size=1, progress=False)
    five_right = loglikelihoods(model, tokenizer, PAIRS, batch_size=5, progress=False)
    tokenizer.padding_side = "left"
    five_left = loglikelihoods(model, tokenizer, PAIRS, batch_size=5, progress=False)
    for a, b, c in zip(one, five_right, five_left):
        assert a[1] == b[1] == c[1]
        assert abs(a[0] - b[0]) < 1e-5 and abs(a[0] - c[0]) < 1e-5


def test_long_inputs_are_cut_from_the_left_to_the_models_positions():
    model, tokenizer = tiny_causal_lm("llama"), byte_tokenizer()
    limit = model.config.max_position_embeddings
    context, continuation = "0123456789" * 40, " the end"
    (ll, n), = loglikelihoods(model, tokenizer, [(context, continuation)], progress=False)
    full = encode(tokenizer, context + continuation)[-(limit + 1):]
    with torch.no_grad():
        logprobs = model(torch.tensor([full[:-1]])).logits[0].log_softmax(-1)
    expected = sum(float(logprobs[j - 1, full[j]]) for j in range(len(full) - n, len(full)))
    assert n == len(continuation) and ll == pytest.approx(expected, abs=1e-4)
    with pytest.raises(UsageError, match="more than the model's 256 positions"):
        loglikelihoods(model, tokenizer, [("a", "b" * (limit + 1))], progress=False)


def test_empty_continuation_is_refused_before_any_forward_pass():
    with pytest.raises(UsageError, match="no tokens to score"):
        loglikelihoods(tiny_causal_lm("gpt2"), byte_tokenizer(), [("a", "")], progress=False)


def test_scoring_uses_eval_mode_and_restores_training_mode():
    model, tokenizer = tiny_causal_lm("gpt2"), byte_tokenizer()
    model.config.resid_pdrop = 0.5
    for module in model.modules():  # dropout that would change every forward pass in train mode
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    expected = loglikelihoods(model, tokenizer, PAIRS[:2], progress=False)
    model.train()
    assert loglikelihoods(model, tokenizer, PAIRS[:2], progress=False) == expected
    assert model.training


def test_half_precision_logits_are_scored_in_float32():
    model, tokenizer = tiny_causal_lm("llama").to(torch.bfloat16), byte_tokenizer()
    context, continuation = PAIRS[0]
    (ll, n), = loglikelihoods(model, tokenizer, [(context, continuation)], progress=False)
    full = encode(tokenizer, context + continuation)
    with torch.no_grad():
        logits = model(torch.tensor([full])).logits[0]
    positions = range(len(full) - n, len(full))
    in_fp32 = sum(float(logits.float().log_softmax(-1)[j - 1, full[j]]) for j in positions)
    in_bf16 = sum(float(logits.log_softmax(-1)[j - 1, full[j]]) for j in positions)
    assert logits.dtype == torch.bfloat16
    assert abs(ll - in_fp32) < 1e-3 < abs(ll - in_bf16)


# ---- multiple choice ----------------------------------------------------------------------------


def test_score_choices_equal_a_hand_computation():
    model, tokenizer = tiny_causal_lm("qwen2"), byte_tokenizer()
    questions = [
        ("Question: What do you sit on?\nAnswer:", (" a chair", " the ocean", " x")),
        ("Question: Which is a colour?\nAnswer:", (" red", " seven", " thinking hard")),
        ("Question: Pick one\nAnswer:", (" é", " ab", " abcdefgh")),
        ("Question: Where is it?\nAnswer:", (" here", " there")),
    ]
    requests, hand_acc, hand_norm = [], 0, 0
    for k, (context, choices) in enumerate(questions):
        lls = [hand_loglikelihood(model, tokenizer, context, c) for c in choices]
        per_byte = [ll / len(c[1:].encode("utf-8")) for ll, c in zip(lls, choices)]
        label = k % len(choices)
        hand_acc += max(range(len(lls)), key=lls.__getitem__) == label
        hand_norm += max(range(len(lls)), key=per_byte.__getitem__) == label
        requests.append(ChoiceRequest((context,) * len(choices), choices, label))
    got = score_choices(model, tokenizer, requests, batch_size=4, progress=False)
    assert got == {"accuracy": hand_acc / 4, "accuracy_norm": hand_norm / 4}


def test_accuracy_and_accuracy_norm_differ_on_a_constructed_case(monkeypatch):
    """Fixed log-likelihoods: the sums prefer one choice, the per-byte scores another. The normalization counts the
    choice's UTF-8 bytes (" é" is 2) without its separator space (" ab" is 2, so -3 / 2 loses to -4.4 / 3)."""
    fixed = {" a": -2.0, " abcd": -3.0, " ab": -3.0, " abc": -4.4, " é": -2.1, " x": -1.5, " z": -10.0, " q": -1.0}
    monkeypatch.setattr(scoring, "loglikelihoods",
                        lambda model, tokenizer, pairs, **kw: [(fixed[x], 1) for _, x in pairs])
    requests = [ChoiceRequest(("q",) * 2, (" a", " abcd"), 1),  # sums -2 > -3; per byte -2 < -0.75
                ChoiceRequest(("q",) * 2, (" ab", " abc"), 1),  # sums -3 > -4.4; per byte -1.5 < -1.47
                ChoiceRequest(("q",) * 2, (" é", " x"), 0),  # sums -2.1 < -1.5; per byte -1.05 > -1.5
                ChoiceRequest(("q",) * 2, (" z", " q"), 1)]  # both pick " q"
    assert score_choices(None, None, requests, progress=False) == {"accuracy": 0.25, "accuracy_norm": 1.0}


def test_score_choices_refuse_unlabeled_and_ragged_requests():
    with pytest.raises(UsageError, match="label must be in"):
        score_choices(None, None, [ChoiceRequest(("a", "a"), (" b", " c"), -1)], progress=False)
    with pytest.raises(UsageError, match="one context per continuation"):
        score_choices(None, None, [ChoiceRequest(("a",), (" b", " c"), 0)], progress=False)


# ---- prompts: multiple choice ---------------------------------------------------------------------


def canonical(rows: list[dict]) -> list[dict]:
    return list(to_canonical(Dataset.from_list(rows)))


def test_winogrande_partial_scoring_by_hand():
    raw = {"sentence": "The trophy doesn't fit into the suitcase because the _ is too large.",
           "option1": "trophy", "option2": "suitcase", "answer": "1"}
    expected = ChoiceRequest(("The trophy doesn't fit into the suitcase because the trophy",
                              "The trophy doesn't fit into the suitcase because the suitcase"),
                             (" is too large.", " is too large."), 0)
    assert winogrande_requests(canonical([raw])) == [expected]
    assert winogrande_requests([raw]) == [expected]
    model, tokenizer = tiny_causal_lm("mistral"), byte_tokenizer()
    lls = [hand_loglikelihood(model, tokenizer, c, " is too large.") for c in expected.contexts]
    score = score_choices(model, tokenizer, [expected], progress=False)
    assert score["accuracy"] == score["accuracy_norm"] == float(lls[0] > lls[1])


def test_winogrande_blank_at_the_end_and_hidden_labels():
    raw = {"sentence": "Sam gave the ball to Ann because it was _.", "option1": "Sam's", "option2": "Ann's",
           "answer": ""}
    request, = winogrande_requests(canonical([raw]))
    assert request.contexts == ("Sam gave the ball to Ann because it was Sam's",
                                "Sam gave the ball to Ann because it was Ann's")
    assert request.continuations == (" .", " .") and request.label == -1


def test_csqa_requests_from_the_hub_schema():
    raw = {"question": "Where would you put a plate? ", "answerKey": "B",
           "choices": {"label": ["A", "B", "C"], "text": ["sky", "cupboard", "river"]}}
    assert csqa_requests(canonical([raw])) == [ChoiceRequest(
        ("Question: Where would you put a plate?\nAnswer:",) * 3, (" sky", " cupboard", " river"), 1)]


def test_race_requests_question_and_cloze():
    article = "Tom lives in a small town.  He likes apples."
    rows = canonical([
        {"example_id": "middle1.txt", "article": article, "question": "Where does Tom live?",
         "options": ["In a town", "In a city"], "answer": "A"},
        {"example_id": "high2.txt", "article": article, "question": "Tom likes _ very much.",
         "options": ["apples", "pears"], "answer": "A"},
    ])
    plain, cloze = race_requests(rows)
    assert plain == ChoiceRequest((f"Article: {article}\n\nWhere does Tom live?",) * 2, (" In a town", " In a city"), 0)
    assert cloze == ChoiceRequest((f"Article: {article}\n\nTom likes",) * 2,
                                  (" apples very much.", " pears very much."), 0)


# ---- prompts: arithmetic ----------------------------------------------------------------------------

ROWS = [
    {"Question": "Mary has number0 apples and buys number1 more . How many apples does she have ?",
     "Numbers": "8.0 2.5", "Equation": "+ number0 number1"},
    {"Question": "A pie is cut into number0 pieces . Tom 's share is one piece . What fraction is it ?",
     "Numbers": "3.0", "Equation": "/ 1.0 number0"},
]


def test_arithmetic_question_fills_the_numbers_and_removes_spaces_before_punctuation():
    assert arithmetic_question(ROWS[0]) == "Mary has 8 apples and buys 2.5 more. How many apples does she have?"
    assert arithmetic_question(ROWS[1]) == "A pie is cut into 3 pieces. Tom's share is one piece. What fraction is it?"


def test_arithmetic_prompts_by_hand():
    shots = ROWS[:2]
    prompts, answers = arithmetic_prompts(shots, [ROWS[0]], shots=2, seed=3)
    first, second = (shots[i] for i in random.Random(3).sample(range(2), 2))
    worked = {id(ROWS[0]): "Question: Mary has 8 apples and buys 2.5 more. How many apples does she have?\n"
                           "Answer: 10.5\n\n",
              id(ROWS[1]): "Question: A pie is cut into 3 pieces. Tom's share is one piece. What fraction is it?\n"
                           "Answer: 0.3333\n\n"}
    assert prompts == [worked[id(first)] + worked[id(second)]
                       + "Question: Mary has 8 apples and buys 2.5 more. How many apples does she have?\nAnswer:"]
    assert answers == [10.5]
    zero, third = arithmetic_prompts(shots, [ROWS[1]], shots=0)
    assert zero == ["Question: A pie is cut into 3 pieces. Tom's share is one piece. What fraction is it?\nAnswer:"]
    assert third == [1 / 3]
    with pytest.raises(UsageError, match=r"shots must be an integer in \[0, 2\]"):
        arithmetic_prompts(shots, ROWS, shots=3)


def test_arithmetic_prompts_on_the_real_data(shared_data):
    with open(shared_data / "arithmetic" / "cv_mawps" / "fold0" / "train.csv", encoding="utf-8") as fh:
        train = list(csv.DictReader(fh))
    with open(shared_data / "arithmetic" / "cv_mawps" / "fold0" / "dev.csv", encoding="utf-8") as fh:
        dev = list(csv.DictReader(fh))
    prompts, answers = arithmetic_prompts(train, dev, shots=4, seed=0)
    assert len(prompts) == len(answers) == len(dev)
    assert all("number0" not in p and p.count("Question: ") == 5 and p.endswith("\nAnswer:") for p in prompts)
    header = prompts[0][:prompts[0].rindex("Question: ")]
    assert all(p.startswith(header) for p in prompts)  # the same four shots for every question
    close = [abs(a - float(r["Answer"])) < 1e-2 for a, r in zip(answers, dev)]
    assert sum(close) / len(close) > 0.99  # the Answer column is only rounded in a few problems


def test_training_pairs_per_task_kind():
    wino = {"sentence": "Ann thanked Sue because _ had helped.", "option1": "Ann", "option2": "Sue", "answer": "2"}
    assert training_pairs("winogrande", canonical([wino])) == [("Ann thanked Sue because Sue", " had helped.")]
    csqa = {"question": "q?", "choices": ["x", "y"], "label": 1}
    unlabeled = {"question": "q2?", "choices": ["x", "y"], "label": -1}
    assert training_pairs("multiple_choice", canonical([csqa, unlabeled])) == [("Question: q?\nAnswer:", " y")]
    assert training_pairs("arithmetic", ROWS[1:2]) == [
        ("Question: A pie is cut into 3 pieces. Tom's share is one piece. What fraction is it?\nAnswer:",
         " 0.3333\n")]
    with pytest.raises(UsageError, match="task_kind must be one of multiple_choice, winogrande, arithmetic; got 'mc'"):
        training_pairs("mc", [])
    assert TASK_KINDS == ("multiple_choice", "winogrande", "arithmetic")


# ---- generation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("42", 42.0), (" The answer is 10.5 apples.", 10.5), ("-3 degrees", -3.0), ("about 1,000 birds", 1000.0),
    ("3/4 of the pie", 0.75), ("3 / 4", 0.75), ("1,234,567.5", 1234567.5), (".5", 0.5), ("x = 7, y = 8", 7.0),
    ("$12.", 12.0), ("5-3", 5.0), ("2/0", 2.0), ("no number here", None), ("", None), ("1,00", 1.0),
])
def test_parse_number(text, expected):
    assert parse_number(text) == expected


def test_score_generation_with_a_stubbed_generate():
    outputs = [" 10.5", " It is 1,000.", " 3/4", " I don't know", "-2", " 0.6667", " 7 or 8"]
    answers = [10.5, 1000.0, 0.75, 3.0, -2.0, 2 / 3, 8.0]
    seen = {}

    def generate(model, tokenizer, prompts, **kwargs):
        seen.update(kwargs, prompts=list(prompts))
        return outputs

    prompts = [f"p{i}" for i in range(len(outputs))]
    got = score_generation(None, None, prompts, answers, max_new_tokens=5, batch_size=2, generate=generate,
                           progress=False)
    assert got == {"accuracy": 5 / 7, "correct": 5.0, "total": 7.0}  # "I don't know" has no number, "7 or 8" reads 7
    assert seen == {"max_new_tokens": 5, "batch_size": 2, "progress": False, "prompts": prompts}
    assert abs(0.6667 - 2 / 3) < ANSWER_TOLERANCE < abs(0.667 - 2 / 3)
    assert score_generation(None, None, ["p"], [2 / 3], generate=lambda *a, **k: ["0.667"])["accuracy"] == 0.0
    with pytest.raises(UsageError, match="one answer per prompt"):
        score_generation(None, None, ["p"], [1.0, 2.0], generate=generate)


def test_cut_generation_at_a_newline_or_an_eos():
    tokenizer = byte_tokenizer()
    eos = tokenizer.eos_token_id
    assert cut_generation(tokenizer, encode(tokenizer, " 12\n\nQuestion:"), {eos}) == " 12"
    assert cut_generation(tokenizer, encode(tokenizer, "34") + [eos] + encode(tokenizer, "5\n"), {eos}) == "34"


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_answers_equal_unbatched_generate(arch):
    model, tokenizer = tiny_causal_lm(arch), byte_tokenizer()
    with torch.no_grad():
        model.lm_head.weight.mul_(40)  # peaked distributions: no near-ties for float noise to flip
    prompts = ["Question: 1 + 1?\nAnswer:", "Hi", "Question: How many legs has a cat?\nAnswer:", "7 * 6 ="]
    got = generate_answers(model, tokenizer, prompts, max_new_tokens=12, batch_size=3, progress=False)
    assert tokenizer.padding_side == "right"  # set to left for generation, then restored
    for prompt, text in zip(prompts, got):
        ids = torch.tensor([encode(tokenizer, prompt)])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                             pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
        out = out[:out.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in out else out
        assert text == tokenizer.decode(out, skip_special_tokens=True).split("\n")[0]
    assert len(set(got)) > 1 and any(got)


# ---- perplexity ----------------------------------------------------------------------------------

TEXT = "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of " \
       "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, " \
       "it was the season of Darkness, it was the spring of hope."


def hand_perplexity(model, tokenizer, text: str, seq_len: int, windows: int) -> float:
    ids = encode(tokenizer, text)
    total = 0.0
    with torch.no_grad():
        for w in range(windows):
            window = ids[w * seq_len:(w + 1) * seq_len]
            logprobs = model(torch.tensor([window])).logits[0].log_softmax(-1)
            total -= sum(float(logprobs[t, window[t + 1]]) for t in range(seq_len - 1))
    return math.exp(total / (windows * (seq_len - 1)))


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_perplexity_equals_a_hand_computation(arch):
    model, tokenizer = tiny_causal_lm(arch), byte_tokenizer()
    seq_len = 48
    windows = len(TEXT.encode("utf-8")) // seq_len
    assert windows == 5 and len(TEXT) % seq_len  # a tail to drop
    got = perplexity(model, tokenizer, TEXT, seq_len=seq_len, batch_size=3, progress=False)
    assert got == pytest.approx(hand_perplexity(model, tokenizer, TEXT, seq_len, windows), rel=1e-5)
    capped = perplexity(model, tokenizer, TEXT, seq_len=seq_len, max_windows=2, progress=False)
    assert capped == pytest.approx(hand_perplexity(model, tokenizer, TEXT, seq_len, 2), rel=1e-5)
    assert capped != pytest.approx(got, rel=1e-6)


def test_perplexity_refuses_bad_windows():
    model, tokenizer = tiny_causal_lm("gpt2"), byte_tokenizer()
    with pytest.raises(UsageError, match="fewer than one window"):
        perplexity(model, tokenizer, "short", seq_len=16, progress=False)
    with pytest.raises(UsageError, match=r"seq_len must be an integer in \[2, 256\]"):
        perplexity(model, tokenizer, TEXT, seq_len=512, progress=False)
    with pytest.raises(UsageError, match="max_windows must be a positive integer"):
        perplexity(model, tokenizer, TEXT, seq_len=16, max_windows=0, progress=False)
