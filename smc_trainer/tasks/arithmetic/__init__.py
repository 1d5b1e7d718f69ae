"""Arithmetic reasoning (SMC-Bench 2.2): MAWPS, ASDiv-A and SVAMP math word problems solved by GTS.

`build` loads the CSV splits (`data`), puts a GTS tree decoder (`modeling_gts`) on a pretrained
encoder (`loading`), encodes the problems, and hands the SparseTrainer the paper's optimizer and
StepLR schedule (`optim`) and the answer-accuracy metric (`metrics`). The benchmarks have no
validation split: the final model is evaluated once on the held-out fold (MAWPS, ASDiv-A) or on
SVAMP and reported as the test metric; nothing is selected on it (the original took the best epoch
by test accuracy). Cross-validated recipes run every fold through `smc_trainer.runs.folds`.

The second model option: an encoder-decoder `--model_name_or_path` (T5, BART, ...) is trained to write
the prefix equation as text (`seq2seq`), scored by the same answer accuracy.

Importing this package registers `GTSConfig` / `GTSForMathWordProblems` with `AutoConfig` / `AutoModel`.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, DataCollatorForSeq2Seq
from transformers.utils import logging

from smc_trainer.tasks import TaskBundle
from smc_trainer.tasks.arithmetic import seq2seq
from smc_trainer.tasks.arithmetic.configuration_gts import GTSConfig
from smc_trainer.tasks.arithmetic.data import SPLITS, ArithmeticCollator, load_raw_splits, prepare_split
from smc_trainer.tasks.arithmetic.equations import evaluate_prefix, is_correct
from smc_trainer.tasks.arithmetic.loading import is_seq2seq, load_model_and_tokenizer
from smc_trainer.tasks.arithmetic.metrics import make_compute_metrics
from smc_trainer.tasks.arithmetic.modeling_gts import GTSForMathWordProblems
from smc_trainer.tasks.arithmetic.optim import gts_optimizers
from smc_trainer.tasks.arithmetic.vocab import EquationVocab

logger = logging.get_logger(__name__)

AutoConfig.register(GTSConfig.model_type, GTSConfig, exist_ok=True)
AutoModel.register(GTSConfig, GTSForMathWordProblems, exist_ok=True)


def build(model_args, data_args, training_args, recipe) -> TaskBundle:
    """Data, GTS model, collator, metric and the paper's optimizer/scheduler for an arithmetic recipe."""
    raw = load_raw_splits(data_args, model_args, recipe)  # data errors surface before any model download
    model, tokenizer, source = load_model_and_tokenizer(model_args, data_args, training_args, raw)
    logger.info(f"arithmetic: model {source}")
    chance = recipe.chance_level if recipe is not None else None
    if is_seq2seq(model.config):
        return build_seq2seq(model, tokenizer, source, raw, data_args, training_args, chance)
    vocab = model.config.vocab
    train, validation, test = (prepare_split(raw[s], s, tokenizer, vocab, data_args, training_args) for s in SPLITS)
    optimizer, scheduler = gts_optimizers(model, training_args, data_args.encoder_learning_rate,
                                          data_args.lr_step_epochs, data_args.lr_step_gamma, len(train))
    if getattr(training_args, "lr_rewind", False):  # the Trainer builds the cyclic schedule over both LR groups
        logger.info("arithmetic: --lr_rewind's cyclic schedule replaces GTS's StepLR (both learning rates rewind)")
        scheduler = None
    half = training_args.fp16 or training_args.bf16
    return TaskBundle(
        model=model,
        processing_class=tokenizer,
        train_dataset=train,
        eval_dataset=validation,
        test_dataset=test,
        data_collator=ArithmeticCollator(tokenizer, vocab.max_numbers, pad_to_multiple_of=8 if half else None),
        compute_metrics=make_compute_metrics(vocab),
        chance_level=chance,
        model_source=source,
        trainer_kwargs={"optimizers": (optimizer, scheduler)},
    )


def build_seq2seq(model, tokenizer, source: str, raw, data_args, training_args, chance: float | None) -> TaskBundle:
    """The seq2seq option (`smc_trainer.tasks.arithmetic.seq2seq`): the Trainer's own optimizer and schedule over
    the whole model at --learning_rate (the GTS-only flags --encoder_learning_rate, --lr_step_*, --gts_* are not
    used), labels padded with -100, answer accuracy of the generated equations."""
    logger.info("arithmetic (seq2seq): the Trainer's optimizer and --lr_scheduler_type train the whole model at "
                f"--learning_rate {training_args.learning_rate:g}; --encoder_learning_rate, --lr_step_epochs/gamma and "
                "--gts_* apply to GTS only")
    train, validation, test = (seq2seq.prepare_split(raw[s], s, tokenizer, data_args, training_args) for s in SPLITS)
    half = training_args.fp16 or training_args.bf16
    return TaskBundle(
        model=model,
        processing_class=tokenizer,
        train_dataset=train,
        eval_dataset=validation,
        test_dataset=test,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100,
                                             pad_to_multiple_of=8 if half else None),
        compute_metrics=seq2seq.make_compute_metrics(tokenizer),
        chance_level=chance,
        model_source=source,
    )


__all__ = ["EquationVocab", "GTSConfig", "GTSForMathWordProblems", "build", "evaluate_prefix", "is_correct"]
