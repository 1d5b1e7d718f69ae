"""Calibration: run a few training examples through the model with forward hooks that collect, per prunable
linear, what the activation-aware criteria need (`smc_trainer.engine.criteria.wanda`, `.sparsegpt`).

- `input_norms`: ||X_j||_2 of every input feature of every prunable linear, in one pass over the dense model
  (Wanda's scores and OWL's outlier ratios); memory is one vector per linear.
- `sequential`: the layer Hessians X X^T one block at a time (targets grouped by their report group: a
  transformer layer, the head, ...), blocks in the order the forward pass reaches them. Each block's statistics
  are collected with the blocks before it already pruned, the block is pruned, its statistics are freed, and
  the next block follows (SparseGPT). A forward pass stops as soon as the block's linears have all run, so
  pruning L blocks costs about (L + 1) / 2 forward passes, and memory stays at one block's Hessians.

Padding positions (attention_mask 0) are left out of the statistics wherever a linear's input is laid out as
the batch's tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformers.utils import logging

from smc_trainer.engine.targets import PruneTarget
from smc_trainer.errors import UsageError

logger = logging.get_logger(__name__)


class _BlockDone(Exception):
    """Raised from a hook once every linear of the block being calibrated has run: the rest of the forward
    pass is not needed."""


def module_of(model: nn.Module, target: PruneTarget) -> nn.Module:
    """The module that owns `target`'s weight."""
    return model.get_submodule(target.name.rsplit(".", 1)[0]) if "." in target.name else model


class HookCalibrator:
    """Collects calibration statistics of `model`'s prunable linears from the batches `batches()` yields
    (model inputs, already on the model's device). The model runs in eval mode without gradients."""

    def __init__(self, model: nn.Module, batches: Callable[[], Iterable[Mapping[str, Any]]]):
        self.model = model
        self.batches = batches
        self._token_mask: Tensor | None = None

    # ---- running the model -----------------------------------------------------------------------

    def _rows(self, inputs: tuple) -> Tensor:
        """A linear's input as float32 [tokens, in], without the padding tokens of the current batch."""
        x = inputs[0].detach()
        rows = x.reshape(-1, x.shape[-1]).float()
        mask = self._token_mask
        if mask is not None and x.dim() >= 3 and mask.shape[-1] == x.shape[-2] and mask.numel() == rows.shape[0]:
            rows = rows[mask.reshape(-1).to(rows.device) != 0]
        return rows

    def _run(self, hooks: Mapping[nn.Module, Callable[[Tensor], None]], stop_after: set[nn.Module] | None = None,
             limit: int | None = None) -> None:
        """Forward the calibration batches (the first `limit` of them) with `hooks[module](rows)` called on every
        hooked module's input; with `stop_after`, each pass ends once all those modules have run."""
        seen: set[nn.Module] = set()

        def make_hook(fn: Callable[[Tensor], None]):
            def hook(module: nn.Module, inputs: tuple) -> None:
                fn(self._rows(inputs))
                if stop_after is not None:
                    seen.add(module)
                    if stop_after <= seen:
                        raise _BlockDone
            return hook

        handles = [m.register_forward_pre_hook(make_hook(fn)) for m, fn in hooks.items()]
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for i, batch in enumerate(self.batches()):
                    if limit is not None and i >= limit:
                        break
                    seen.clear()
                    self._token_mask = batch.get("attention_mask")
                    with contextlib.suppress(_BlockDone):
                        self.model(**batch)
        finally:
            for handle in handles:
                handle.remove()
            self._token_mask = None
            self.model.train(was_training)

    def _modules(self, targets: Sequence[PruneTarget]) -> dict[str, nn.Module]:
        return {t.name: module_of(self.model, t) for t in targets}

    # ---- statistics ------------------------------------------------------------------------------

    def input_norms(self, targets: Sequence[PruneTarget]) -> dict[str, Tensor]:
        """||X_j||_2 over all calibration tokens for every input feature j of every target (dense model, one pass)."""
        modules = self._modules(targets)
        squares: dict[nn.Module, Tensor] = {}

        def add(module: nn.Module) -> Callable[[Tensor], None]:
            def fn(rows: Tensor) -> None:
                total = rows.square().sum(dim=0)
                squares[module] = total if module not in squares else squares[module] + total
            return fn

        self._run({m: add(m) for m in set(modules.values())})
        self._check_reached(targets, modules, squares)
        return {t.name: squares[modules[t.name]].sqrt() for t in targets}

    def blocks(self, targets: Sequence[PruneTarget]) -> list[list[PruneTarget]]:
        """Targets grouped by report group, groups in the order the forward pass first reaches them."""
        modules = self._modules(targets)
        first_call: dict[nn.Module, int] = {}

        def note(module: nn.Module) -> Callable[[Tensor], None]:
            return lambda rows: first_call.setdefault(module, len(first_call))

        self._run({m: note(m) for m in set(modules.values())}, limit=1)
        self._check_reached(targets, modules, first_call)
        groups: dict[str, list[PruneTarget]] = {}
        for t in sorted(targets, key=lambda t: first_call[modules[t.name]]):
            groups.setdefault(t.group, []).append(t)
        return list(groups.values())

    def sequential(self, targets: Sequence[PruneTarget], prune: Callable[[PruneTarget, Tensor], None]) -> None:
        """For each block in forward order: collect its linears' Hessians X X^T (summed over calibration tokens)
        with the earlier blocks already pruned, then call `prune(target, hessian)` for each of its targets."""
        for block in self.blocks(targets):
            modules = self._modules(block)
            hessians: dict[nn.Module, Tensor] = {}
            unique = set(modules.values())
            self._run({m: _hessian_adder(hessians, m) for m in unique}, stop_after=unique)
            self._check_reached(block, modules, hessians)
            for t in block:
                prune(t, hessians[modules[t.name]])
            logger.info(f"calibrated and pruned {block[0].group} ({len(block)} weights)")
            hessians.clear()

    @staticmethod
    def _check_reached(targets: Sequence[PruneTarget], modules: Mapping[str, nn.Module], stats: Mapping) -> None:
        missed = [t.name for t in targets if modules[t.name] not in stats]
        if missed:
            raise UsageError(f"no calibration input reached {', '.join(missed[:3])}: a one-shot criterion cannot "
                             "score weights the forward pass does not use; leave them out with --prune_exclude")


def _hessian_adder(hessians: dict[nn.Module, Tensor], module: nn.Module) -> Callable[[Tensor], None]:
    """A hook body adding rows^T rows of `module`'s input to `hessians[module]`."""
    def add(rows: Tensor) -> None:
        if module not in hessians:
            hessians[module] = torch.zeros(rows.shape[1], rows.shape[1], device=rows.device)
        hessians[module].addmm_(rows.t(), rows)
    return add


def calibration_batches(trainer: Any) -> Iterable[dict[str, Any]]:
    """`--calibration_samples` examples of the trainer's calibration set (`--calibration_file`'s examples, else the
    training set): a random subset seeded by `--seed`, in dataset order, identical on every process (no distributed
    sampler), batched by `--per_device_eval_batch_size` with the trainer's collator and moved to the model's
    device."""
    from torch.utils.data import DataLoader, Subset

    from_file = getattr(trainer, "calibration_dataset", None) is not None
    dataset = trainer.calibration_dataset if from_file else trainer.train_dataset
    where = f"--calibration_file {trainer.args.calibration_file}" if from_file else "the training set"
    if dataset is None or not hasattr(dataset, "__len__"):
        raise UsageError("one-shot calibration needs a training dataset with a length (not a streaming one)")
    args = trainer.args
    n = min(args.calibration_samples, len(dataset))
    if n < args.calibration_samples:
        logger.warning_once(f"--calibration_samples {args.calibration_samples}: {where} has only {n} examples")
    generator = torch.Generator().manual_seed(args.seed)
    indices = sorted(torch.randperm(len(dataset), generator=generator)[:n].tolist())
    collator = trainer.data_collator
    if hasattr(dataset, "select") and hasattr(dataset, "column_names"):  # a datasets.Dataset
        subset = trainer._remove_unused_columns(dataset.select(indices), description="calibration")
    else:
        subset = Subset(dataset, indices)
        collator = trainer._get_collator_with_removed_columns(collator, description="calibration")
    for batch in DataLoader(subset, batch_size=args.per_device_eval_batch_size, collate_fn=collator):
        yield trainer._prepare_inputs(batch)
