"""`build` of the causal_lm family: a recipe's rows, a decoder LM and the family's evaluator as one TaskBundle.

The rows come from the loaders the encoder recipes use (multiple choice: `multiple_choice.load_raw_splits` and the
canonical schema; arithmetic: `arithmetic.data.load_raw_splits`, folds included), so `llm_csqa` reads exactly
what `csqa` reads. `--llm_task` says how they are scored (`prompts` turns them into requests and prompts). The
training split becomes (prompt, answer) pairs for the recovery fine-tune (`--max_steps N`), or `--train_text`
windows; a one-shot run (`--max_steps 0`) whose criterion reads no training batches tokenizes none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers.utils import logging

import smc_trainer.tasks.causal_lm.data as llm_data
from smc_trainer.errors import UsageError
from smc_trainer.tasks import TaskBundle
from smc_trainer.tasks.causal_lm.evaluation import CausalLmEvaluator
from smc_trainer.tasks.loading import checkpoint_name, offline_hint
from smc_trainer.training.arguments.causal_lm import DEFAULT_CALIBRATION_TEXT, NO_PERPLEXITY

logger = logging.get_logger(__name__)

MULTIPLE_CHOICE = ("csqa", "winogrande", "race")
PAIR_KINDS = {"csqa": "multiple_choice", "race": "multiple_choice", "winogrande": "winogrande",
              "arithmetic": "arithmetic"}  # --llm_task -> prompts.training_pairs' task kind
DEFAULT_FEWSHOT = {"arithmetic": 4}  # multiple choice: 0 (zero-shot, lm-evaluation-harness's default)
DEFAULT_NEW_TOKENS = 32
Rows = list[dict[str, Any]]


def build(model_args, data_args, training_args, recipe) -> TaskBundle:
    """Rows (before any weights load), model and tokenizer, training / calibration / evaluation sets, evaluator."""
    from smc_trainer.tasks.causal_lm.loading import load_causal_lm

    task = llm_task(training_args, recipe)
    check_run_flags(training_args, task)
    train_rows, eval_rows, test_rows = load_rows(task, data_args, model_args, recipe)
    name = checkpoint_name(model_args)
    with offline_hint(name):
        model, tokenizer = load_causal_lm(name, torch_dtype=training_args.torch_dtype)
    logger.info(f"causal_lm ({task}): model {name} ({next(model.parameters()).dtype})")
    shots = fewshot(training_args, task)
    evaluation = [eval_set(task, rows, train_rows, shots, training_args.seed) for rows in (eval_rows, test_rows)]
    if task == "perplexity":
        evaluation[1] = llm_data.PerplexityOnly()
    perplexity = None if training_args.perplexity_text == NO_PERPLEXITY else training_args.perplexity_text
    evaluator = CausalLmEvaluator(tokenizer, batch_size=training_args.per_device_eval_batch_size,
                                  max_new_tokens=training_args.generation_max_length or DEFAULT_NEW_TOKENS,
                                  perplexity_text=perplexity, perplexity_seq_len=training_args.perplexity_seq_len,
                                  progress=not training_args.disable_tqdm)
    return TaskBundle(
        model=model,
        processing_class=tokenizer,
        train_dataset=training_set(task, train_rows, tokenizer, data_args, training_args),
        eval_dataset=evaluation[0],
        test_dataset=evaluation[1],
        data_collator=llm_data.make_collator(tokenizer, training_args),
        compute_metrics=None,
        chance_level=recipe.chance_level if recipe is not None else None,
        model_source=f"{name} (pretrained)",
        calibration_dataset=calibration_set(tokenizer, training_args),
        evaluate=evaluator,
    )


# ---- flags ----------------------------------------------------------------------------------------


def llm_task(training_args, recipe) -> str:
    task = training_args.llm_task
    if task is None:
        where = f"recipe {recipe.name!r}" if recipe is not None else "the run"
        raise UsageError(f"{where} runs the causal_lm task but sets no --llm_task (csqa, winogrande, race, "
                         "arithmetic or perplexity): say how its rows are scored")
    return task


def check_run_flags(training_args, task: str) -> None:
    """What this family cannot do, refused before anything loads."""
    if str(getattr(training_args.eval_strategy, "value", training_args.eval_strategy)) != "no":
        raise UsageError("a causal_lm run scores its splits after training (choices, generations, perplexity), not "
                         f"with the Trainer's evaluation loop: pass --eval_strategy no (got "
                         f"{training_args.eval_strategy})")
    if training_args.calibration_file is not None:
        raise UsageError("--calibration_file holds a task's training examples; a causal LM calibrates on windows of "
                         "a text: pass --calibration_text FILE (.txt / .jsonl) instead")
    if training_args.num_fewshot and task in MULTIPLE_CHOICE:
        raise UsageError(f"--num_fewshot {training_args.num_fewshot}: multiple-choice tasks ({task}) are scored "
                         "zero-shot only; leave --num_fewshot out (or 0)")
    if task == "perplexity" and training_args.perplexity_text == NO_PERPLEXITY:
        raise UsageError("--llm_task perplexity scores --perplexity_text only; --perplexity_text none leaves nothing "
                         "to evaluate")
    if training_args.max_steps != 0 and task == "perplexity" and training_args.train_text is None:
        raise UsageError("--llm_task perplexity has no training rows: recovery (--max_steps N) needs --train_text")


def fewshot(training_args, task: str) -> int:
    """--num_fewshot, else the task's default (4 solved examples for arithmetic, 0 for multiple choice)."""
    value = training_args.num_fewshot
    return DEFAULT_FEWSHOT.get(task, 0) if value is None else value


# ---- rows ---------------------------------------------------------------------------------------


def load_rows(task: str, data_args, model_args, recipe) -> tuple[Rows, Rows | dict[str, Rows] | None,
                                                                   Rows | dict[str, Rows] | None]:
    """(train, validation, test) rows through the encoder recipes' loaders; validation / test may be a dict of
    named subsets (RACE), or None where the recipe has no such split."""
    if task == "perplexity":
        return [], None, None
    if task == "arithmetic":
        from smc_trainer.tasks.arithmetic.data import load_raw_splits as arithmetic_splits

        raw = arithmetic_splits(data_args, model_args, recipe)
        return tuple(_limit(list(raw[s]) if raw[s] is not None else None, data_args, s)  # type: ignore[return-value]
                     for s in ("train", "validation", "test"))
    from smc_trainer.tasks.multiple_choice import load_raw_splits as choice_splits

    raw = choice_splits(data_args, model_args, recipe)
    subsets = list(recipe.subsets) if recipe is not None else []
    train = canonical_rows(raw["train"], "train", [], data_args) if raw.get("train") is not None else []
    return (train, canonical_rows(raw.get("validation"), "validation", subsets, data_args),  # type: ignore[return-value]
            canonical_rows(raw.get("test"), "test", subsets, data_args))


def canonical_rows(dataset: Any, split: str, subsets: Sequence[str], data_args) -> Rows | dict[str, Rows] | None:
    """Labeled canonical rows of one multiple-choice split (`multiple_choice_schemas`), grouped by subset when the
    recipe names subsets (a dict given per Hub config is kept)."""
    from smc_trainer.tasks.multiple_choice import split_subsets, to_canonical

    if dataset is None:
        return None
    if isinstance(dataset, dict):
        parts = {name: to_canonical(part, where=f"{split} split ({name})") for name, part in dataset.items()}
    else:
        canonical = to_canonical(dataset, where=f"{split} split")
        if not subsets or split == "train":
            return _limit(_labeled(canonical), data_args, split)
        parts = split_subsets(canonical, subsets, where=f"{split} split")
    grouped = {name: _limit(_labeled(part), data_args, split) for name, part in parts.items()}
    return {name: rows for name, rows in grouped.items() if rows} or None


def _labeled(dataset) -> Rows:
    return [row for row in dataset if row["label"] >= 0]


def _limit(rows: Rows | None, data_args, split: str) -> Rows | None:
    """--max_train_samples / --max_eval_samples (debugging), and None for a split with no labeled rows."""
    if rows is None:
        return None
    limit = data_args.max_train_samples if split == "train" else data_args.max_eval_samples
    rows = rows[:limit] if limit is not None else rows
    if not rows and split != "train":
        logger.warning(f"the {split} split has no labeled rows (hidden test labels?); it is not evaluated")
        return None
    return rows


# ---- the sets the bundle holds ----------------------------------------------------------------------


def eval_set(task: str, rows: Rows | dict[str, Rows] | None, train_rows: Rows, shots: int, seed: int) -> Any:
    """A split's ChoiceSet / GenerationSet (a dict of them per subset), None without rows."""
    if rows is None:
        return None
    if isinstance(rows, dict):
        return {name: eval_set(task, part, train_rows, shots, seed) for name, part in rows.items()}
    import smc_trainer.tasks.causal_lm.prompts as prompts

    if task == "arithmetic":
        prompt_texts, answers = prompts.arithmetic_prompts(train_rows, rows, shots=shots, seed=seed)
        return llm_data.GenerationSet(prompt_texts, answers)
    builders = {"csqa": prompts.csqa_requests, "winogrande": prompts.winogrande_requests,
                "race": prompts.race_requests}
    return llm_data.ChoiceSet(builders[task](rows))


def needs_training_rows(training_args) -> bool:
    """Whether the run reads training batches: it trains (not `trains_no_steps`: --max_steps 0, or 0 epochs), or
    its criterion scores with gradients of training batches (SNIP, oBERT)."""
    from smc_trainer.training.trainer import trains_no_steps

    if not trains_no_steps(training_args):
        return True
    from smc_trainer.engine.criteria import get_criterion_class
    from smc_trainer.methods import get_method_class

    criterion = get_method_class(training_args.sparse_method).criterion_name(training_args)
    return criterion is not None and get_criterion_class(criterion).needs in ("gradients", "training")


def training_set(task: str, rows: Rows, tokenizer, data_args, training_args):
    """The recovery fine-tune's data: `--train_text` windows of --max_seq_length tokens, else the training rows'
    (prompt, answer) pairs with the loss on the answer only."""
    if not needs_training_rows(training_args):
        return llm_data.empty_training_set()
    if training_args.train_text is not None:
        from smc_trainer.tasks.causal_lm.text_data import load_text

        text = load_text(training_args.train_text, "train")
        return llm_data.text_windows(tokenizer, text, data_args.max_seq_length)
    if not rows:
        raise UsageError(f"the {task} recipe has no training rows to fine-tune on; pass --train_text")
    from smc_trainer.tasks.causal_lm.prompts import training_pairs

    pairs = training_pairs(PAIR_KINDS[task], rows)
    return llm_data.tokenize_pairs(tokenizer, pairs, data_args.max_seq_length)


def calibration_set(tokenizer, training_args):
    """`--calibration_samples` windows of `--calibration_seq_len` tokens of `--calibration_text` (default c4),
    seeded by --seed, when the method calibrates; None otherwise."""
    from smc_trainer.methods import get_method_class

    if not get_method_class(training_args.sparse_method).calibrated(training_args):
        return None
    from smc_trainer.tasks.causal_lm.text_data import calibration_samples

    source = training_args.calibration_text or DEFAULT_CALIBRATION_TEXT
    samples = calibration_samples(tokenizer, source, n_samples=training_args.calibration_samples,
                                  seq_len=training_args.calibration_seq_len, seed=training_args.seed)
    logger.info(f"causal_lm: {len(samples)} calibration windows of {training_args.calibration_seq_len} tokens from "
                f"{source}")
    return llm_data.calibration_dataset(samples)


__all__ = ["build", "canonical_rows", "check_run_flags", "eval_set", "fewshot", "llm_task", "load_rows",
           "needs_training_rows", "training_set"]
