"""The arithmetic model's flags: --arithmetic_model gts | graph2tree, GTS's sizes and learning-rate schedule, and
Graph2Tree's own sizes (smc_trainer/tasks/arithmetic).

Training flags rather than data flags because the model is a row of the report: `arithmetic_model` is a variant
axis (`smc_trainer.runs.variants`) that applies to the dense baseline too, so a sweep runs GTS and Graph2Tree side
by side. Graph2Tree's hidden size and learning rates differ from GTS's in the paper (Table 4), so they are flags of
their own, at the paper's values, read only when the model is Graph2Tree (GTS keeps --gts_hidden_size,
--learning_rate and --encoder_learning_rate); they are left out of keys at their defaults. GTS's settings were data
flags when the first keys were written, so they are keyed with the data flags (`section="data"`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from smc_trainer.errors import UsageError
from smc_trainer.training.arguments.roles import declare

ARITHMETIC_MODELS = ("gts", "graph2tree")


@dataclass
class ArithmeticArguments:
    """Which tree-decoder model an arithmetic recipe trains, GTS's and Graph2Tree's paper sizes and schedules."""

    help_group: ClassVar[str] = "Arithmetic (GTS, Graph2Tree)"

    arithmetic_model: str = declare(field(
        default="gts",
        metadata={"choices": ARITHMETIC_MODELS,
                  "help": "Arithmetic: the model over the pretrained encoder: gts (BiLSTM encoder + goal-driven tree "
                  "decoder, Xie & Sun 2019) or graph2tree (the same BiLSTM and decoder with graph convolutions over "
                  "the quantity cell and quantity comparison graphs between them, Zhang et al. 2020). Graph2Tree "
                  "reads the data's group_nums column and the --graph2tree_* sizes; both share --gts_num_layers, "
                  "--gts_dropout, --lr_step_* and the beam."},
    ), key="dense", omit_at_default=True)
    encoder_learning_rate: float = declare(field(
        default=8e-6,
        metadata={"help": "Arithmetic: learning rate of the pretrained encoder (paper: 8e-6); --learning_rate is "
                  "the BiLSTM and tree decoder's (paper: 1e-3)."},
    ), key="dense", section="data")
    lr_step_epochs: int = declare(field(
        default=20, metadata={"help": "Arithmetic: StepLR period in epochs (paper: every 20 epochs)."}
    ), key="dense", section="data")
    lr_step_gamma: float = declare(field(
        default=0.5, metadata={"help": "Arithmetic: StepLR factor applied every --lr_step_epochs (paper: 0.5)."}
    ), key="dense", section="data")
    gts_hidden_size: int = declare(field(
        default=512, metadata={"help": "Arithmetic: GTS hidden size (paper: 512)."}
    ), key="dense", section="data")
    gts_num_layers: int = declare(field(
        default=2, metadata={"help": "Arithmetic: BiLSTM layers over the encoder states (paper: 2)."}
    ), key="dense", section="data")
    gts_dropout: float = declare(field(
        default=0.5, metadata={"help": "Arithmetic: GTS dropout (paper: 0.5)."}
    ), key="dense", section="data")
    gts_encoder_dropout: float = declare(field(
        default=0.0,
        metadata={"help": "Arithmetic: dropout on the pretrained encoder's states before the BiLSTM (official code: "
                  "none, the default; earlier smc-trainer versions used --gts_dropout here)."},
    ), key="dense", section="data")
    graph2tree_hidden_size: int = declare(field(
        default=384,
        metadata={"help": "Arithmetic, --arithmetic_model graph2tree: hidden size of the BiLSTM, graph module and "
                  "tree decoder (paper: 384; a multiple of 4, one quarter per graph convolution)."},
    ), key="dense", omit_at_default=True)
    graph2tree_learning_rate: float = declare(field(
        default=8e-4,
        metadata={"help": "Arithmetic, --arithmetic_model graph2tree: learning rate of the BiLSTM, graph module and "
                  "tree decoder (paper: 8e-4), in place of --learning_rate."},
    ), key="dense", omit_at_default=True)
    graph2tree_encoder_learning_rate: float = declare(field(
        default=1e-5,
        metadata={"help": "Arithmetic, --arithmetic_model graph2tree: learning rate of the pretrained encoder "
                  "(paper: 1e-5), in place of --encoder_learning_rate."},
    ), key="dense", omit_at_default=True)

    def _check_arithmetic_model(self) -> None:
        if self.arithmetic_model not in ARITHMETIC_MODELS:  # the parser refuses it too; the Python API does not
            raise UsageError(f"--arithmetic_model must be one of {', '.join(ARITHMETIC_MODELS)}; "
                             f"got {self.arithmetic_model!r}")
        if self.graph2tree_hidden_size < 4 or self.graph2tree_hidden_size % 4:
            raise UsageError("--graph2tree_hidden_size must be a positive multiple of 4 (four graph convolutions "
                             f"of a quarter each); got {self.graph2tree_hidden_size}")
