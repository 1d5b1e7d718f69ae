"""Calibration: run a few training examples through the model with forward hooks that collect, per prunable
linear, what the activation-aware criteria need (`smc_trainer.engine.criteria.wanda`, `.sparsegpt`).

- `input_norms`: ||X_j||_2 of every input feature of every prunable linear, in one pass over the dense model
  (Wanda's scores and OWL's outlier ratios); memory is one vector per linear.
- `sequential`: the layer Hessians X X^T one block at a time (targets grouped by their report group: a
  transformer layer, the head, ...), blocks in the order the forward pass reaches them. Each block's statistics
  are collected with the blocks before it already pruned, the block is pruned, and the next block follows
  (SparseGPT). Linears that read the same input tensor (q, k, v) share one Hessian, and each Hessian is freed
  as soon as its linears are pruned. Memory holds one block's Hessians (`memory="block"`), or one Hessian at a
  time at the cost of one pass per input group (`memory="layer"`).

  Where the blocks are consecutive items of one `nn.ModuleList` (the layers of every HF encoder and decoder), the
  model runs once up to the first block, whose inputs (hidden states and keyword arguments, per batch) are cached;
  then each block runs on the cached inputs to collect its Hessians, is pruned, and runs once more so its pruned
  outputs become the next block's inputs: 2 block forwards per block, as SparseGPT's and Wanda's reference code.
  Blocks outside the list (a classification head) and models without one take whole-model passes that stop once
  the block's linears have run (about (L + 1) / 2 full forwards for L blocks). Both hand `prune` the same
  Hessians up to float rounding (tests/training/test_cached_calibration.py).

Padding positions (attention_mask 0) are left out of the statistics wherever a linear's input is laid out as
the batch's tokens.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers.utils import logging

from smc_trainer.engine.criteria.base import CALIBRATION_MEMORY
from smc_trainer.engine.targets import PruneTarget, plain_named_modules
from smc_trainer.errors import UsageError

logger = logging.get_logger(__name__)

Hooks = Mapping[nn.Module, Callable[[nn.Module, Tensor], None]]  # module -> fn(module, its input)
HESSIAN_CHUNK_TOKENS = 128  # the hook's float32 copy of a padded (or half-precision) input: 128 tokens at a time


class _BlockDone(Exception):
    """Raised from a hook once every linear of the block being calibrated has run: the rest of the forward
    pass is not needed."""


def module_of(model: nn.Module, target: PruneTarget) -> nn.Module:
    """The module that owns `target`'s weight, found by its plain name through adapters: under `--peft lora` the
    base layer inside the LoRA wrapper, whose input is the wrapper's (so a one-shot criterion calibrates the
    PeftModel a LoRA recovery trains)."""
    return plain_submodule(model, target.name.rsplit(".", 1)[0]) if "." in target.name else model


def plain_submodule(model: nn.Module, name: str) -> nn.Module:
    """`model.get_submodule(name)` for a plain (adapter-free) module name; a model without adapters directly."""
    if not callable(getattr(model, "get_base_model", None)):
        return model.get_submodule(name)
    for plain, module in plain_named_modules(model):
        if plain == name:
            return module
    raise AttributeError(f"{type(model).__name__} has no module {name!r} (seen through its adapters)")


@dataclass
class _BlockInput:
    """One batch's input to a block: its positional and keyword arguments, and the batch's attention mask (to
    leave padding out of the Hessians)."""

    args: tuple
    kwargs: dict[str, Any]
    token_mask: Tensor | None

    @property
    def hidden(self) -> Tensor:
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    def with_hidden(self, hidden: Tensor) -> _BlockInput:
        if self.args:
            return _BlockInput((hidden, *self.args[1:]), self.kwargs, self.token_mask)
        return _BlockInput(self.args, {**self.kwargs, "hidden_states": hidden}, self.token_mask)


class HookCalibrator:
    """Collects calibration statistics of `model`'s prunable linears from the batches `batches()` yields
    (model inputs, already on the model's device). The model runs in eval mode without gradients.

    `cache_inputs` (default) calibrates a chain of blocks on cached block inputs (module docstring); the cached
    hidden states stay on the model's device up to `cache_bytes`, beyond that they wait on the CPU."""

    def __init__(self, model: nn.Module, batches: Callable[[], Iterable[Mapping[str, Any]]],
                 cache_inputs: bool = True, cache_bytes: float = 2 * 2**30):
        self.model = model
        self.batches = batches
        self.cache_inputs = cache_inputs
        self.cache_bytes = cache_bytes
        self._token_mask: Tensor | None = None

    # ---- running the model -----------------------------------------------------------------------

    def _token_keep(self, x: Tensor) -> Tensor | None:
        """Which rows of `x` flattened to [rows, in] are real tokens of the current batch (None: keep them all).
        An input is laid out as the batch's tokens when it is [..., seq, in] over the mask's [batch, seq], or
        already flattened to [batch x seq, in] (OPT's MLP flattens its hidden states before fc1)."""
        mask = self._token_mask
        if mask is None:
            return None
        rows = x.numel() // x.shape[-1]
        if mask.numel() != rows or not (x.dim() == 2 or (x.dim() >= 3 and mask.shape[-1] == x.shape[-2])):
            return None
        return mask.reshape(-1).to(x.device) != 0

    def _rows(self, x: Tensor) -> Tensor:
        """A linear's input `x` as float32 [tokens, in], without the padding tokens of the current batch."""
        x = x.detach()
        rows = x.reshape(-1, x.shape[-1]).float()
        keep = self._token_keep(x)
        return rows if keep is None else rows[keep]

    def _row_chunks(self, x: Tensor) -> Iterator[Tensor]:
        """`_rows(x)` in pieces, for the Hessian: the input itself when it is float32 without padding (a view, no
        copy), else float32 copies of the non-padding rows of HESSIAN_CHUNK_TOKENS tokens at a time, so the hook
        never holds a float32 copy of the whole batch's input beside the Hessian."""
        x = x.detach()
        flat = x.reshape(-1, x.shape[-1])
        keep = self._token_keep(x)
        keep = None if keep is None or bool(keep.all()) else keep
        if keep is None and flat.dtype == torch.float32:
            yield flat
            return
        for start in range(0, flat.shape[0], HESSIAN_CHUNK_TOKENS):
            rows = flat[start:start + HESSIAN_CHUNK_TOKENS]
            rows = rows if keep is None else rows[keep[start:start + HESSIAN_CHUNK_TOKENS]]
            yield rows.float()

    def _run(self, hooks: Hooks,
             stop_after: set[nn.Module] | None = None, limit: int | None = None) -> None:
        """Forward the calibration batches (the first `limit` of them) with `hooks[module](module, x)` called on
        every hooked module's input `x`; with `stop_after`, each pass ends once all those modules have run."""
        seen: set[nn.Module] = set()
        handles = _install_hooks(hooks, seen, stop_after)
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

        def add(module: nn.Module, x: Tensor) -> None:
            total = self._rows(x).square().sum(dim=0)
            squares[module] = total if module not in squares else squares[module] + total

        self._run(dict.fromkeys(set(modules.values()), add))
        self._check_reached(targets, modules, squares)
        return {t.name: squares[modules[t.name]].sqrt() for t in targets}

    def blocks(self, targets: Sequence[PruneTarget]) -> list[list[list[PruneTarget]]]:
        """Targets grouped by report group, groups in the order the forward pass first reaches them; inside each
        block, its input groups in forward order: consecutive linears that read the very same input tensor in the
        first batch (q, k and v of an attention layer) form one input group, with one Hessian."""
        modules = self._modules(targets)
        order: dict[nn.Module, int] = {}
        leader: dict[nn.Module, nn.Module] = {}
        previous: list[Any] = [None, None]  # a weak reference to the last hooked input, and its module

        def note(module: nn.Module, x: Tensor) -> None:
            if module in order:
                return
            order[module] = len(order)
            same = previous[0] is not None and previous[0]() is x
            leader[module] = leader[previous[1]] if same else module
            previous[:] = [weakref.ref(x), module]

        self._run(dict.fromkeys(set(modules.values()), note), limit=1)
        self._check_reached(targets, modules, order)
        blocks: dict[str, dict[nn.Module, list[PruneTarget]]] = {}
        for t in sorted(targets, key=lambda t: order[modules[t.name]]):
            blocks.setdefault(t.group, {}).setdefault(leader[modules[t.name]], []).append(t)
        return [list(groups.values()) for groups in blocks.values()]

    def sequential(self, targets: Sequence[PruneTarget], prune: Callable[[list[PruneTarget], Tensor], None],
                   memory: str = "block") -> None:
        """For each block in forward order: the Hessian X X^T (float32, summed over the calibration tokens) of each
        of its input groups, with the earlier blocks already pruned and the block itself still dense, handed to
        `prune(group, hessian)`; `prune` may overwrite the Hessian, which is freed (or reused) after it returns.

        `memory="block"` collects a block's Hessians in one pass and prunes its groups in forward order;
        `memory="layer"` runs one pass per input group, the block's last group first (a group's input does not
        depend on the groups after it, so each still sees its block dense before it), holding one Hessian at a
        time. Both hand `prune` the same Hessians bit for bit; "layer" costs one pass per group instead of one
        per block."""
        if memory not in CALIBRATION_MEMORY:
            raise UsageError(f"--calibration_memory must be one of {', '.join(CALIBRATION_MEMORY)}; got {memory!r}")
        blocks = self.blocks(targets)
        buffer = None
        if memory == "layer":  # one buffer for every group's Hessian: no Hessian-sized free and malloc per group
            n = max(g[0].param.shape[g[0].input_dim] for block in blocks for g in block)
            buffer = torch.empty(n * n, device=blocks[0][0][0].param.device)
        layers = self._block_chain(blocks) if self.cache_inputs else []
        if layers:
            self._sequential_cached(blocks[: len(layers)], layers, prune, memory, buffer)
        for block in blocks[len(layers):]:
            self._prune_block(block, prune, memory, buffer)
            logger.info(f"calibrated and pruned {block[0][0].group} ({sum(map(len, block))} weights)")

    def _prune_block(self, block: list[list[PruneTarget]], prune: Callable[[list[PruneTarget], Tensor], None],
                     memory: str, buffer: Tensor | None,
                     run: Callable[[Hooks], None] | None = None
                     ) -> None:
        """Collect the Hessians of `block`'s input groups and hand each to `prune`: all in one pass ("block"), or
        one group per pass, last group first ("layer"). `run(hooks)` runs the pass (default: the whole model)."""
        if memory == "block":
            hessians = self._hessians(block, run=run)
            for i, group in enumerate(block):
                prune(group, hessians.pop(i))
        else:
            for group in reversed(block):
                prune(group, self._hessians([group], buffer, run=run).pop(0))

    # ---- cached block inputs ---------------------------------------------------------------------

    def _block_chain(self, blocks: Sequence[list[list[PruneTarget]]]) -> list[nn.Module]:
        """The modules of the leading blocks when the first two or more blocks in forward order are consecutive
        items of one nn.ModuleList; empty when there is no such chain."""
        found: list[tuple[str, int]] = []
        for block in blocks:
            common = os.path.commonprefix([t.name.split(".")[:-1] for group in block for t in group])
            if len(common) < 2 or not common[-1].isdigit():
                break
            parent, index = ".".join(common[:-1]), int(common[-1])
            if not isinstance(plain_submodule(self.model, parent), nn.ModuleList):
                break
            if found and (parent != found[0][0] or index != found[-1][1] + 1):
                break
            found.append((parent, index))
        if len(found) < 2:
            return []
        layers = plain_submodule(self.model, found[0][0])
        return [layers[i] for _, i in found]

    def _capture_inputs(self, layer: nn.Module) -> list[_BlockInput]:
        """Every calibration batch's input to `layer`, from forward passes stopped there (no KV cache; the caller
        has put the model in eval mode)."""
        cached: list[_BlockInput] = []

        def capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
            kwargs = dict(kwargs)
            if kwargs.get("past_key_values") is not None:
                kwargs["past_key_values"] = None
            cached.append(_BlockInput(tuple(args), kwargs, self._token_mask))
            raise _BlockDone

        config = getattr(self.model, "config", None)
        use_cache = getattr(config, "use_cache", None)
        handle = layer.register_forward_pre_hook(capture, with_kwargs=True)
        try:
            if use_cache is not None:
                config.use_cache = False  # a block run twice on one KV cache would attend to its own keys
            with torch.no_grad():
                for batch in self.batches():
                    self._token_mask = batch.get("attention_mask")
                    with contextlib.suppress(_BlockDone):
                        self.model(**batch)
        finally:
            handle.remove()
            self._token_mask = None
            if use_cache is not None:
                config.use_cache = use_cache
        if not cached:
            raise UsageError("calibration: no calibration batch reached the first transformer block")
        total = sum(c.hidden.numel() * c.hidden.element_size() for c in cached)
        if total > self.cache_bytes:
            logger.info(f"calibration: the cached block inputs ({total / 2**30:.2f} GiB) exceed the cache budget "
                        f"({self.cache_bytes / 2**30:.2f} GiB); they wait on the CPU between blocks")
            cached = [c.with_hidden(c.hidden.cpu()) for c in cached]
        return cached

    def _run_block(self, layer: nn.Module, inputs: Sequence[_BlockInput],
                   hooks: Hooks | None = None,
                   keep_outputs: bool = False) -> list[_BlockInput]:
        """Run `layer` on every cached input, with `hooks` on its linears' inputs (a pass stops once they have all
        run, unless the outputs are kept); returns the inputs of the next block when `keep_outputs`."""
        hooks = hooks or {}
        seen: set[nn.Module] = set()
        handles = _install_hooks(hooks, seen, None if keep_outputs else set(hooks))
        param = next(layer.parameters(), None)
        device = param.device if param is not None else inputs[0].hidden.device
        outputs: list[_BlockInput] = []
        try:
            with torch.no_grad():
                for item in inputs:
                    seen.clear()
                    self._token_mask = item.token_mask
                    cached_on = item.hidden.device
                    item = item.with_hidden(item.hidden.to(device))  # from the CPU when the cache waits there
                    with contextlib.suppress(_BlockDone):
                        out = layer(*item.args, **item.kwargs)
                        if keep_outputs:
                            out = out[0] if isinstance(out, tuple) else out
                            outputs.append(item.with_hidden(out.to(cached_on)))
        finally:
            for handle in handles:
                handle.remove()
            self._token_mask = None
        return outputs

    def _sequential_cached(self, blocks: Sequence[list[list[PruneTarget]]], layers: Sequence[nn.Module],
                           prune: Callable[[list[PruneTarget], Tensor], None], memory: str,
                           buffer: Tensor | None) -> None:
        """`sequential` for blocks that are consecutive `layers`: their Hessians from each layer run on the cached
        inputs, and the pruned layer's outputs as the next layer's inputs."""
        was_training = self.model.training
        self.model.eval()
        try:
            inputs = self._capture_inputs(layers[0])
            for block, layer in zip(blocks, layers, strict=True):
                self._prune_block(block, prune, memory, buffer,
                                  run=lambda hooks, layer=layer, inputs=inputs: self._run_block(layer, inputs, hooks))
                inputs = self._run_block(layer, inputs, keep_outputs=True)
                logger.info(f"calibrated and pruned {block[0][0].group} ({sum(map(len, block))} weights, cached "
                            "block inputs)")
        finally:
            self.model.train(was_training)

    def _hessians(self, groups: Sequence[list[PruneTarget]], buffer: Tensor | None = None,
                  run: Callable[[Hooks], None] | None = None
                  ) -> dict[int, Tensor]:
        """The Hessian of each input group (by position in `groups`) from one pass, stopped once all their linears
        have run: `run(hooks)` (a block on its cached inputs), else the whole model. A group's first linear
        accumulates; the others check that they read the very same tensor. The Hessians are allocated before the
        pass, not amid its activations, which would fragment the heap; with `buffer` (one group), its Hessian is the
        zeroed start of that buffer."""
        hessians: dict[int, Tensor] = {}
        hooks: dict[nn.Module, Callable[[nn.Module, Tensor], None]] = {}
        reached: set[int] = set()
        for i, group in enumerate(groups):
            param = group[0].param
            n = param.shape[group[0].input_dim]
            hessians[i] = (torch.zeros(n, n, device=param.device) if buffer is None
                           else buffer[:n * n].view(n, n).zero_())
            first: list[Any] = [None]
            hooks[module_of(self.model, group[0])] = self._hessian_adder(hessians[i], reached, i, first)
            for t in group[1:]:
                hooks[module_of(self.model, t)] = _same_input_check(first, group[0].name, t.name)
        if run is None:
            self._run(hooks, stop_after=set(hooks))
        else:
            run(hooks)
        _refuse_unreached([g[0].name for i, g in enumerate(groups) if i not in reached])
        return hessians

    def _hessian_adder(self, hessian: Tensor, reached: set[int], key: int, first: list[Any]
                       ) -> Callable[[nn.Module, Tensor], None]:
        """A hook body adding rows^T rows of the input (padding left out) to `hessian` and `key` to `reached`; it
        keeps a weak reference to the input in `first[0]` for the group's other linears to check against."""
        def add(module: nn.Module, x: Tensor) -> None:
            first[0] = weakref.ref(x)
            reached.add(key)
            for rows in self._row_chunks(x):
                hessian.addmm_(rows.t(), rows)
        return add

    @staticmethod
    def _check_reached(targets: Sequence[PruneTarget], modules: Mapping[str, nn.Module], stats: Mapping) -> None:
        _refuse_unreached([t.name for t in targets if modules[t.name] not in stats])


def _install_hooks(hooks: Hooks, seen: set[nn.Module],
                   stop_after: set[nn.Module] | None) -> list[Any]:
    """Forward pre-hooks calling `hooks[module](module, x)` on each hooked module's input `x`; with `stop_after`,
    the forward pass is stopped (`_BlockDone`) once all those modules are in `seen`. Returns the handles."""
    def make_hook(fn: Callable[[nn.Module, Tensor], None]):
        def hook(module: nn.Module, inputs: tuple) -> None:
            fn(module, inputs[0])
            if stop_after is not None:
                seen.add(module)
                if stop_after <= seen:
                    raise _BlockDone
        return hook

    return [m.register_forward_pre_hook(make_hook(fn)) for m, fn in hooks.items()]


def _refuse_unreached(missed: Sequence[str]) -> None:
    if missed:
        raise UsageError(f"no calibration input reached {', '.join(missed[:3])}: a one-shot criterion cannot "
                         "score weights the forward pass does not use; leave them out with --prune_exclude")


def _same_input_check(first: list[Any], leader: str, name: str) -> Callable[[nn.Module, Tensor], None]:
    """A hook body refusing an input other than the one its group's first linear just read (the groups come from
    the first batch; a model that feeds them different tensors later would get a wrong Hessian)."""
    def check(module: nn.Module, x: Tensor) -> None:
        if first[0] is None or first[0]() is not x:
            raise RuntimeError(f"calibration: {name} read the same input as {leader} in the first batch but not in "
                               "a later one; their shared Hessian would be wrong")
    return check


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
