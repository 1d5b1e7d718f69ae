"""`run_smc.py --help` grouped by method and axis, with transformers' TrainingArguments folded away.

`HfArgumentParser` adds every field of one dataclass to one argument group, and `SparseTrainingArguments` is one
dataclass composed of mixins (method, GMP, RigL / SET, LoRA, ...). Each mixin names its group in words
(`help_group`; a method's or criterion's config in `HyperParameters.title`); `group_flags` files every flag
under the group of the class that declares it. `--help` lists TrainingArguments' most used flags and folds the
other ones into one line; `--help-all` lists them all. Parsing is untouched: only where flags are shown moves.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

TRAINING_GROUP = "Training (transformers TrainingArguments)"
# TrainingArguments' flags that `--help` keeps in view; `--help-all` shows the other ones
COMMON_TRAINING_FLAGS = (
    "output_dir", "learning_rate", "num_train_epochs", "max_steps",
    "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps", "warmup_steps",
    "weight_decay", "seed", "fp16", "bf16", "use_cpu", "eval_strategy", "save_strategy", "logging_steps",
    "report_to", "resume_from_checkpoint", "push_to_hub", "hub_model_id",
)


def declaring_class(cls: type, name: str) -> type:
    """The class in `cls`'s MRO that declares field `name` (the most derived one, where a field is redeclared)."""
    for klass in cls.__mro__:
        if name in klass.__dict__.get("__annotations__", {}):
            return klass
    return cls


def group_title(klass: type) -> str | None:
    """The group a class's own fields are listed under; None for a class that names none (the caller decides)."""
    title = klass.__dict__.get("help_group")
    if title:
        return title
    if klass.__module__.startswith("transformers."):
        return TRAINING_GROUP
    return None


def flag_groups(dataclass_types: list[type]) -> dict[str, str]:
    """Field name -> group title, for every field of the parser's dataclasses, in field order; a field whose
    class names no group is listed under that class's name (`tests/runs/test_cli.py` requires a title for all)."""
    titles: dict[str, str] = {}
    for dtype in dataclass_types:
        for spec in dataclasses.fields(dtype):
            klass = declaring_class(dtype, spec.name)
            titles[spec.name] = group_title(klass) or klass.__name__
    return titles


class FullHelp(argparse.Action):
    """`--help-all`: the help with every TrainingArguments flag, then exit (as `--help` does)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, default: Any = argparse.SUPPRESS,
                 help: str | None = None) -> None:  # noqa: A002 (argparse's keyword)
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print_help(parser, full=True)
        parser.exit()


def print_help(parser: argparse.ArgumentParser, full: bool = False) -> None:
    """The parser's help; `full`: with the TrainingArguments flags `--help` folds away."""
    if full:
        for action, text in getattr(parser, "folded_help", {}).items():
            action.help = text
    parser.print_help()


def group_flags(parser: argparse.ArgumentParser, dataclass_types: list[type]) -> None:
    """File the parser's flags under their groups (model, data, each method and axis, TrainingArguments last) and
    fold the less used TrainingArguments flags out of `--help` (`--help-all` shows them). A renamed flag's former
    option strings still parse but leave the listing (its help says "Formerly --init_method")."""
    from smc_trainer.training.arguments.generated import former_options
    from smc_trainer.training.arguments.renamed import renamed_flags

    titles = flag_groups(dataclass_types)
    former = {option for name in renamed_flags() for option in former_options(name)}
    parser.add_argument("--help-all", action=FullHelp,
                        help="show this help with every transformers TrainingArguments flag, and exit")
    ordered = [t for t in dict.fromkeys(titles.values()) if t != TRAINING_GROUP] + [TRAINING_GROUP]
    groups = {title: parser.add_argument_group(title) for title in ordered}
    optionals = parser._optionals  # argparse keeps a group's flags in `_group_actions`; only the listing moves
    folded: dict[argparse.Action, str | None] = {}
    for action in list(optionals._group_actions):
        title = titles.get(action.dest)
        if title is None:
            continue  # -h, --help-all
        optionals._group_actions.remove(action)
        groups[title]._group_actions.append(action)
        action.option_strings = [option for option in action.option_strings if option not in former]
        if title == TRAINING_GROUP and action.dest not in COMMON_TRAINING_FLAGS and action.help != argparse.SUPPRESS:
            folded[action] = action.help
            action.help = argparse.SUPPRESS
    training = groups[TRAINING_GROUP]
    hidden = len({action.dest for action in folded})
    training.description = (f"The most used of them; {hidden} more (evaluation, saving, logging, precision, "
                             "distributed, Hub) are listed by --help-all.")
    parser.folded_help = folded
