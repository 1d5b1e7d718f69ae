"""The weights trained: --peft and the LoRA flags (smc_trainer/training/adapters, docs/peft.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from smc_trainer.errors import UsageError
from smc_trainer.training.arguments.common import _choices_error
from smc_trainer.training.arguments.roles import declare, defaults_where

if TYPE_CHECKING:
    from smc_trainer.training.arguments import SparseTrainingArguments

PEFT_CHOICES = ("none", "lora")
LORA_RELEASES = ("merged", "adapter")
ADAPTER_GRADIENTS = ("exact", "straight_through")


@dataclass
class LoraArguments:
    """--peft none (full fine-tuning) or lora, and the adapters' rank, scale, targets, gradient and release."""

    help_group: ClassVar[str] = "LoRA (--peft lora)"

    peft: str = declare(field(
        default="none",
        metadata={"choices": PEFT_CHOICES,
                  "help": "Which weights are trained: none (all of them, full fine-tuning) or lora (the base model is "
                  "frozen and pruned by the method; LoRA adapters on its prunable linears and the task head are "
                  "trained). See docs/peft.md."},
    ), key="run")
    lora_r: int = declare(field(default=8, metadata={"help": "LoRA: rank of the adapters."}), key="run", lora=True)
    lora_alpha: int = declare(
        field(default=16, metadata={"help": "LoRA: alpha; the update is scaled by alpha / r."}), key="run", lora=True)
    lora_dropout: float = declare(field(
        default=0.0,
        metadata={"help": "LoRA: dropout on the adapters' input. With --sparse_adapter, a non-zero dropout costs one "
                  "more weight-sized matrix product per layer and step."},
    ), key="run", lora=True)
    lora_target_modules: str | None = declare(field(
        default=None,
        metadata={"help": "LoRA: comma-separated module names (e.g. query,value, or full names) that get adapters. "
                  "Default: every prunable Linear/Conv1D of the model outside the task head."},
    ), key="run", lora=True)
    lora_learning_rate: float | None = declare(field(
        default=None,
        metadata={"help": "LoRA: learning rate of the adapters and head (LoRA usually wants ~10x a full fine-tune's). "
                  "Default: --learning_rate. Kept apart so that after-methods recover the dense fine-tune cached "
                  "at --learning_rate, the one full retraining starts from."},
    ), key="run", lora=True)
    sparse_adapter: bool = declare(field(
        default=True,
        metadata={"help": "LoRA: mask each adapter's update by its base weight's mask, in training and in the merge, "
                  "so the merged model keeps every zero and computes what was trained. false: plain LoRA, re-masked "
                  "after the merge (measures what the mask costs)."},
    ), key="run", lora=True)
    adapter_gradient: str = declare(field(
        default="exact",
        metadata={"choices": ADAPTER_GRADIENTS,
                  "help": "LoRA with --sparse_adapter: the gradient of A and B. exact: the masked update's true "
                  "gradient, which needs one more weight-sized product per layer and step ((g^T x) * mask). "
                  "straight_through: the gradient as if the mask were all ones (low-rank, plain LoRA's cost); "
                  "the forward pass and the merge stay masked exactly. See docs/peft.md for what each costs."},
    ), key="run", lora=True)
    lora_release: str = declare(field(
        default="merged",
        metadata={"choices": LORA_RELEASES,
                  "help": "LoRA: what a run saves as its model: merged (the adapters merged into a plain sparse "
                  "model, loads with from_pretrained) or adapter (adapter_config.json + adapter_model.safetensors "
                  "+ masks, loaded on the sparse base with smc_trainer.training.adapters.load_sparse_adapter)."},
    ), key="run", lora=True)


def lora_defaults() -> dict[str, object]:
    """The LoRA settings (fields declared `lora=True`) and their defaults: full fine-tuning leaves them there."""
    return defaults_where(LoraArguments, lora=True)


def check_peft_flags(args: SparseTrainingArguments) -> None:
    """Refuse LoRA flags without --peft lora, bad LoRA values, and methods that need to train the base weights."""
    import importlib.util

    from smc_trainer.methods import get_method_class

    if args.peft not in PEFT_CHOICES:
        raise UsageError(str(_choices_error("peft", args.peft, PEFT_CHOICES)))
    if args.peft == "none":
        defaults = lora_defaults()
        given = [f"--{name} {getattr(args, name)}" for name, default in defaults.items()
                 if getattr(args, name) != default]
        if given:
            raise UsageError(f"{', '.join(given)} configure LoRA, which is off (--peft none); add --peft lora or drop "
                             "them")
        return
    if args.lora_r < 1:
        raise UsageError(f"--lora_r must be >= 1; got {args.lora_r}")
    if args.lora_alpha <= 0:
        raise UsageError(f"--lora_alpha must be > 0; got {args.lora_alpha}")
    if args.lora_learning_rate is not None and not args.lora_learning_rate > 0:
        raise UsageError(f"--lora_learning_rate must be > 0; got {args.lora_learning_rate}")
    if not 0.0 <= args.lora_dropout < 1.0:
        raise UsageError(f"--lora_dropout must be in [0, 1); got {args.lora_dropout}")
    if args.adapter_gradient not in ADAPTER_GRADIENTS:
        raise UsageError(str(_choices_error("adapter_gradient", args.adapter_gradient, ADAPTER_GRADIENTS)))
    if args.adapter_gradient != "exact" and not args.sparse_adapter:
        raise UsageError("--adapter_gradient straight_through is a choice for the masked adapters; with "
                         "--sparse_adapter false the adapters are plain LoRA and their gradient is exact already")
    if args.lora_release not in LORA_RELEASES:
        raise UsageError(str(_choices_error("lora_release", args.lora_release, LORA_RELEASES)))
    if args.lora_release == "adapter" and not args.sparse_adapter:
        raise UsageError("--lora_release adapter needs --sparse_adapter true: a plain adapter re-masked after the "
                         "merge is no longer an adapter; release the merged model (--lora_release merged)")
    refusal = get_method_class(args.sparse_method).lora_refusal(args)
    if refusal:
        raise UsageError(refusal)
    if importlib.util.find_spec("peft") is None:
        raise UsageError("--peft lora needs the peft package: pip install 'smc-trainer[peft]'")
