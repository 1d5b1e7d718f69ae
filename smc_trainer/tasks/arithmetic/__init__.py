"""Arithmetic reasoning (SMC-Bench 2.2): MAWPS, ASDiv-A and SVAMP math word problems solved by GTS.

`build` loads the CSV splits (`data`), puts a GTS tree decoder (`modeling_gts`) on a pretrained
encoder (`loading`), encodes the problems, and hands the SparseTrainer the paper's optimizer and
StepLR schedule (`optim`) and the answer-accuracy metric (`metrics`). The benchmarks have no
validation split: the final model is evaluated once on the held-out fold (MAWPS, ASDiv-A) or on
SVAMP and reported as the test metric; nothing is selected on it (the original took the best epoch
by test accuracy). Cross-validated recipes run every fold through `smc_trainer.folds`.

Importing this package registers `GTSConfig` / `GTSForMathWordProblems` with `AutoConfig` / `AutoModel`.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel
from transformers.utils import logging

from smc_trainer.tasks import TaskBundle
from smc_trainer.tasks.arithmetic.configuration_gts import GTSConfig
from smc_trainer.tasks.arithmetic.data import SPLITS, ArithmeticCollator, load_raw_splits, prepare_split
from smc_trainer.tasks.arithmetic.equations import evaluate_prefix, is_correct
from smc_trainer.tasks.arithmetic.loading import load_model_and_tokenizer
from smc_trainer.tasks.arithmetic.metrics import make_compute_metrics
from smc_trainer.tasks.arithmetic.modeling_gts import GTSForMathWordProblems
from smc_trainer.tasks.arithmetic.optim import gts_optimizers
from smc_trainer.tasks.arithmetic.vocab import EquationVocab

logger = logging.get_logger(__name__)

AutoConfig.register(GTSConfig.model_type, GTSConfig, exist_ok=True)
AutoModel.register(GTSConfig, GTSForMathWordProblems, exist_ok=True)


def build(model_args, data_args, training_args, recipe) -> TaskBundle:
    """Data, GTS model, collator, metric and the paper's optimizer/scheduler for an arithmetic recipe."""
    if training_args.predict_with_generate:
        raise ValueError("--predict_with_generate does not apply to GTS: it decodes equations by beam search in its "
                         "evaluation forward (--generation_num_beams / --generation_max_length set the beam)")
    raw = load_raw_splits(data_args, model_args, recipe)  # data errors surface before any model download
    model, tokenizer, source = load_model_and_tokenizer(model_args, data_args, training_args, raw)
    logger.info(f"arithmetic: model {source}")
    vocab = model.config.vocab
    train, validation, test = (prepare_split(raw[s], s, tokenizer, vocab, data_args, training_args) for s in SPLITS)
    optimizer, scheduler = gts_optimizers(model, training_args, data_args.encoder_learning_rate,
                                          data_args.lr_step_epochs, data_args.lr_step_gamma, len(train))
    half = training_args.fp16 or training_args.bf16
    return TaskBundle(
        model=model,
        processing_class=tokenizer,
        train_dataset=train,
        eval_dataset=validation,
        test_dataset=test,
        data_collator=ArithmeticCollator(tokenizer, vocab.max_numbers, pad_to_multiple_of=8 if half else None),
        compute_metrics=make_compute_metrics(vocab),
        chance_level=recipe.chance_level if recipe is not None else None,
        model_source=source,
        trainer_kwargs={"optimizers": (optimizer, scheduler)},
    )


__all__ = ["EquationVocab", "GTSConfig", "GTSForMathWordProblems", "build", "evaluate_prefix", "is_correct"]
