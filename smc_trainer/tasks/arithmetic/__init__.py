"""Arithmetic reasoning (SMC-Bench 2.2): MAWPS, ASDiv-A and SVAMP math word problems solved by GTS or Graph2Tree.

`build` loads the CSV splits (`data`), puts a GTS tree decoder (`modeling_gts`) on a pretrained
encoder (`loading`), or with `--arithmetic_model graph2tree` the same decoder behind Graph2Tree's graph module
(`modeling_graph2tree`, graphs from `group_nums` and the numbers' values: `graphs`), encodes the problems,
and hands the SparseTrainer the paper's optimizer and StepLR schedule (`optim`) and the answer-accuracy
metric (`metrics`). The benchmarks have no validation split: the final model is evaluated once on the
held-out fold (MAWPS, ASDiv-A) or on SVAMP and reported as the test metric; nothing is selected on it (the
original took the best epoch by test accuracy). Cross-validated recipes run every fold through `smc_trainer.runs.folds`.

The third model option: an encoder-decoder `--model_name_or_path` (T5, BART, ...) is trained to write
the prefix equation as text (`seq2seq`), scored by the same answer accuracy.

Importing this package registers `GTSConfig` / `GTSForMathWordProblems` and `Graph2TreeConfig` /
`Graph2TreeForMathWordProblems` with `AutoConfig` / `AutoModel`.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, DataCollatorForSeq2Seq
from transformers.utils import logging

from smc_trainer.tasks import TaskBundle
from smc_trainer.tasks.arithmetic import seq2seq
from smc_trainer.tasks.arithmetic.configuration_graph2tree import Graph2TreeConfig
from smc_trainer.tasks.arithmetic.configuration_gts import GTSConfig
from smc_trainer.tasks.arithmetic.data import (
    CALIBRATION,
    COLUMNS,
    GRAPH_COLUMNS,
    SPLITS,
    ArithmeticCollator,
    load_calibration_file,
    load_raw_splits,
    prepare_split,
)
from smc_trainer.tasks.arithmetic.equations import evaluate_prefix, is_correct
from smc_trainer.tasks.arithmetic.loading import is_graph2tree, is_seq2seq, load_model_and_tokenizer
from smc_trainer.tasks.arithmetic.metrics import make_compute_metrics
from smc_trainer.tasks.arithmetic.modeling_graph2tree import Graph2TreeForMathWordProblems
from smc_trainer.tasks.arithmetic.modeling_gts import GTSForMathWordProblems
from smc_trainer.tasks.arithmetic.optim import gts_trainer_kwargs
from smc_trainer.tasks.arithmetic.vocab import EquationVocab

logger = logging.get_logger(__name__)

AutoConfig.register(GTSConfig.model_type, GTSConfig, exist_ok=True)
AutoModel.register(GTSConfig, GTSForMathWordProblems, exist_ok=True)
AutoConfig.register(Graph2TreeConfig.model_type, Graph2TreeConfig, exist_ok=True)
AutoModel.register(Graph2TreeConfig, Graph2TreeForMathWordProblems, exist_ok=True)


def build(model_args, data_args, training_args, recipe) -> TaskBundle:
    """Data, GTS (or Graph2Tree) model, collator, metric and the paper's optimizer/scheduler for an arithmetic
    recipe."""
    graphs = is_graph2tree(training_args)
    columns = GRAPH_COLUMNS if graphs else COLUMNS
    raw = load_raw_splits(data_args, model_args, recipe, columns)  # data errors surface before any model download
    calibration = load_calibration_file(getattr(training_args, "calibration_file", None), model_args.cache_dir,
                                        columns)
    model, tokenizer, source = load_model_and_tokenizer(model_args, data_args, training_args, raw, recipe)
    logger.info(f"arithmetic: model {source}")
    chance = recipe.chance_level if recipe is not None else None
    if is_seq2seq(model.config):
        bundle = build_seq2seq(model, tokenizer, source, raw, data_args, training_args, chance)
        bundle.calibration_dataset = seq2seq.prepare_split(calibration, CALIBRATION, tokenizer, data_args,
                                                           training_args)
        return bundle
    vocab = model.config.vocab
    train, validation, test = (prepare_split(raw[s], s, tokenizer, vocab, data_args, training_args, graphs)
                               for s in SPLITS)
    calibration = prepare_split(calibration, CALIBRATION, tokenizer, vocab, data_args, training_args, graphs)
    encoder_lr, head_lr = learning_rates(training_args)
    optimization = gts_trainer_kwargs(training_args, encoder_lr, training_args.lr_step_epochs,
                                      training_args.lr_step_gamma, len(train), head_learning_rate=head_lr)
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
        trainer_kwargs=optimization,
        calibration_dataset=calibration,
    )


def learning_rates(training_args) -> tuple[float, float]:
    """(pretrained encoder, everything else) learning rates: --encoder_learning_rate and --learning_rate for GTS,
    --graph2tree_encoder_learning_rate and --graph2tree_learning_rate for Graph2Tree."""
    if is_graph2tree(training_args):
        logger.info("arithmetic (graph2tree): --graph2tree_learning_rate "
                    f"{training_args.graph2tree_learning_rate:g} and --graph2tree_encoder_learning_rate "
                    f"{training_args.graph2tree_encoder_learning_rate:g} apply; --learning_rate, "
                    "--encoder_learning_rate and --gts_hidden_size are GTS's")
        return training_args.graph2tree_encoder_learning_rate, training_args.graph2tree_learning_rate
    return training_args.encoder_learning_rate, training_args.learning_rate


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


__all__ = ["EquationVocab", "GTSConfig", "GTSForMathWordProblems", "Graph2TreeConfig", "Graph2TreeForMathWordProblems",
           "build", "evaluate_prefix", "is_correct"]
