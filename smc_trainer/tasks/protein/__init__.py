"""Protein thermostability (SMC-Bench section 2.3): HotProtein HP-S / HP-S2C2 / HP-S2C5 and Meltome Atlas.

Model: any HF ESM checkpoint (default ESM-1b, `facebook/esm1b_t33_650M_UR50S`; ESM-2 sizes by
`--model_name_or_path`) as the backbone of `EsmForThermostability`: residue-mean of the final layer
-> Linear(hidden, 512) -> LayerNorm -> ReLU -> Linear(512, C). A BERT checkpoint (TAPE's ProteinBert
after `run_smc.py convert-tape`, `tape_convert.py`) gets the same head as `BertForThermostability`.
Backbone and head train in one AdamW with their own learning rates (`--learning_rate`,
`--protein_head_learning_rate`) under OneCycle (`optim.py` says what differs from the original).
The recipes prune only the attention Q/K/V/O and FFN linears of the transformer layers
(`prune_modules: qkvo_ffn`).

Data format (local files only: HotProtein and Meltome are not on the Hub in a standard form)
-----------------------------------------------------------------------------------------------
Splits come from `--train_file` / `--validation_file` / `--test_file`, or from `--data_dir` holding
`train.<ext>`, `validation.<ext>`, `test.<ext>` (validation and test optional), where <ext> is
`csv`, `tsv`/`tab` or `fasta`/`fa`/`faa`. Without a validation split, `--protein_validation_percentage`
(10) percent of train is held out (stratified by class, seeded by `--seed`) for checkpoint selection.

CSV / TSV: a header row naming (case-insensitive; other columns are ignored)
  - the sequence: `sequence` (or `seq`, or `real_seq` as in the original Meltome CSVs), amino-acid
    letters; spaces are removed and letters uppercased;
  - the class: `label`, a class name of `--protein_labels` (any case) or its 0-based index;
  - or, when there is no `label` column, the melting temperature `tm` (or `melting_temperature`)
    in deg C, binned by `--protein_tm_bins`: class i holds bins[i-1] <= tm < bins[i].

    sequence,label                       sequence,tm
    MKTAYIAKQRQISFVKSHFSRQ,thermophilic  MSDKIIHLTDDSFDTDVLKA,71.5

FASTA: one record per protein; the header's first word is the id, and `key=value` words (separated
by spaces or `|`) carry `label=` or `tm=` with the same meaning; sequence lines are concatenated.

    >P0A7V8 label=hot                    >Q9XYZ1|tm=71.5
    MKTAYIAKQRQISFVKSHFSRQ               MSDKIIHLTDDSFDTDVLKA

Classes (`--protein_labels`, in label-id order, set by the recipes):
  - hp_s, hp_s2c5: cryophilic, psychrophilic, mesophilic, thermophilic, hyperthermophilic;
  - hp_s2c2: cold, hot (hot: growth temperature >= 45 deg C);
  - meltome: mesophilic, thermophilic, hyperthermophilic, from `tm` with `--protein_tm_bins 45,80`.
UNCONFIRMED: the paper gives no Meltome thresholds (45 and 80 deg C are the conventional
meso/thermo/hyper boundaries; compare the logged class counts with the paper's 7,902 / 15,833 /
10,518), and the order of integer labels in the HotProtein release is not documented (name the
classes in the files to be safe).

Cropping: sequences longer than `--protein_max_residues` (1022: ESM-1b's 1024 positions minus <cls>
and <eos>) keep their first residues; each split logs how many were cropped. Tokens are <cls>,
the residues, <eos>. (The original's `toks[:, :1022]` kept <cls> + 1021 residues and dropped <eos>.)
"""

from __future__ import annotations

from typing import Any

from transformers import DataCollatorWithPadding
from transformers.utils import logging

from smc_trainer.errors import UsageError
from smc_trainer.metrics import argmax_accuracy
from smc_trainer.tasks import TaskBundle
from smc_trainer.tasks.protein.data import ProteinSettings, load_splits, prepare
from smc_trainer.tasks.protein.loading import load_model_and_tokenizer
from smc_trainer.tasks.protein.modeling import (
    BertForThermostability,
    BertThermostabilityConfig,
    EsmForThermostability,
    EsmThermostabilityConfig,
)
from smc_trainer.tasks.protein.optim import HeadBackboneAdamW, head_and_backbone_groups, one_cycle_schedule

logger = logging.get_logger(__name__)


def compute_accuracy(eval_pred: Any) -> dict[str, float]:
    """Accuracy of the arg-max class, through the packaged `evaluate` accuracy module."""
    return argmax_accuracy(eval_pred)


def trainer_kwargs(training_args) -> dict[str, Any]:
    """SparseTrainer kwargs: the two-group AdamW (backbone / head learning rates) and, by default, OneCycle."""
    head_lr = training_args.protein_head_learning_rate
    head_lr = training_args.learning_rate if head_lr is None else head_lr
    if head_lr <= 0:
        raise UsageError(f"--protein_head_learning_rate must be > 0; got {head_lr}")
    optim = getattr(training_args.optim, "value", training_args.optim)
    if not str(optim).startswith("adamw"):
        logger.warning(f"protein: --optim {optim} is replaced by AdamW with backbone and head groups")
    optimizer = {"backbone_lr": training_args.learning_rate, "head_lr": head_lr,
                 "weight_decay": training_args.weight_decay,
                 "betas": (training_args.adam_beta1, training_args.adam_beta2), "eps": training_args.adam_epsilon}
    kwargs: dict[str, Any] = {"optimizer_cls_and_kwargs": (HeadBackboneAdamW, optimizer)}
    if training_args.protein_lr_schedule == "one_cycle":
        kwargs["lr_scheduler_factory"] = one_cycle_schedule
    return kwargs


def build(model_args, data_args, training_args, recipe) -> TaskBundle:
    """Model, tokenized splits, collator, accuracy metric and optimizer settings for a protein recipe.

    The data are read (and checked) before the model, so a bad file fails before a checkpoint download.
    """
    settings = ProteinSettings.from_args(data_args, training_args)
    kwargs = trainer_kwargs(training_args)
    splits = load_splits(data_args, settings, seed=training_args.seed, cache_dir=model_args.cache_dir)
    model, tokenizer, source = load_model_and_tokenizer(model_args, settings)
    prepared = prepare(splits, tokenizer, settings, data_args, training_args)
    half = training_args.fp16 or training_args.bf16
    return TaskBundle(
        model=model,
        processing_class=tokenizer,
        train_dataset=prepared["train"],
        eval_dataset=prepared["validation"],
        test_dataset=prepared["test"],
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if half else None),
        compute_metrics=compute_accuracy,
        chance_level=recipe.chance_level if recipe is not None else None,
        model_source=source,
        trainer_kwargs=kwargs,
    )


__all__ = [
    "BertForThermostability",
    "BertThermostabilityConfig",
    "EsmForThermostability",
    "EsmThermostabilityConfig",
    "HeadBackboneAdamW",
    "ProteinSettings",
    "build",
    "compute_accuracy",
    "head_and_backbone_groups",
    "one_cycle_schedule",
    "trainer_kwargs",
]
