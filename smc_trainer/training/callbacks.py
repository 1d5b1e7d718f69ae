"""SparsityCallback: runs a sparse method from the Trainer's events and keeps its masks enforced.

Event order inside one optimizer step of `transformers.Trainer` (see DESIGN.md "Pitfalls"):
backward of the last micro-batch -> [SparseTrainer.training_step: `before_optimizer_step`: the
method may read dense gradients, then gradients are masked] -> gradient clipping ->
optimizer.step -> `on_optimizer_step`: weights re-masked (unless the optimizer provably kept pruned
weights at zero, see `MaskSet.after_optimizer_step`), schedules advance (never on a step the fp16
grad scaler skipped), masks may change -> zero_grad.

Schedules count optimizer steps that really happened (`self.step`), not micro-batches, and that
count is saved in every checkpoint with the method's own state.

Whenever masks are installed or changed, layers the mask left (almost) empty are named
(`smc_trainer.engine.collapse`): a warning with the remedies, or an error under
`--on_layer_collapse error`, raised before more training is spent on a collapsed model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

from safetensors.torch import load_file, save_file
from transformers import TrainerCallback
from transformers.utils import logging

from smc_trainer.engine.collapse import CollapsedLayer, LayerCollapseError, collapse_message, collapsed_layers
from smc_trainer.engine.masks import MaskSet
from smc_trainer.errors import UsageError
from smc_trainer.methods.base import Calibrator, SparseContext, SparseMethod

logger = logging.get_logger(__name__)

STATE_NAME = "sparse_state.json"
TENSOR_STATE_NAME = "sparse_state.safetensors"  # the method's tensor state (movement scores); absent when empty


class SparsityCallback(TrainerCallback):
    """Drives one `SparseMethod` over one training run."""

    def __init__(
        self,
        method: SparseMethod,
        masks: MaskSet,
        accumulate_gradients: Callable[[int], None],
        step_was_skipped: Callable[[], bool],
        calibrator: Calibrator | None = None,
        gradient_batches: Callable[[int | None], Iterator[None]] | None = None,
        batches_per_pass: Callable[[], int] | None = None,
        on_layer_collapse: str = "warn",
    ):
        self.method = method
        self.on_layer_collapse = on_layer_collapse  # warn | error (--on_layer_collapse)
        self.calibrator = calibrator
        self.masks = masks
        self.accumulate_gradients = accumulate_gradients
        self.step_was_skipped = step_was_skipped
        self.gradient_batches = gradient_batches
        self.batches_per_pass = batches_per_pass
        self.step = 0
        self.initialized = False
        self.events: list[dict[str, Any]] = []
        self.ctx: SparseContext | None = None
        self.preset_masks: dict | None = None  # a mask decided outside the run (LTH/LRR rounds)
        self.collapsed: list[CollapsedLayer] = []  # layers the current masks leave (almost) empty
        self.prune_within_preset = False  # True: preset_masks is the previous round's; the method prunes within it

    def context(self, total_steps: int) -> SparseContext:
        if self.ctx is None or self.ctx.total_steps != total_steps:
            self.ctx = SparseContext(
                targets=self.masks.targets,
                masks=self.masks,
                sparsity=self.method.sparsity,
                total_steps=total_steps,
                accumulate_gradients=self.accumulate_gradients,
                calibrator=self.calibrator,
                count_batches_per_pass=self.batches_per_pass,
            )
            if self.gradient_batches is not None:
                self.ctx.gradient_batches = self.gradient_batches
        return self.ctx

    # ---- Trainer events ---------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        ctx = self.context(state.max_steps)
        if self.initialized:  # resumed from a checkpoint, or a second train() call: keep masks
            if self.masks.active:  # re-install: re-mask, and zero this optimizer's (loaded) state at pruned positions
                self.masks.set_masks(self.masks.masks, optimizer)
                self._check_collapse(f"in the masks resumed at step {self.step}")
            return
        preset, self.preset_masks = self.preset_masks, None
        if self.prune_within_preset:  # LRR with a criterion that needs this trainer's batches (oBERT)
            if preset is not None:
                self.masks.set_masks(preset, optimizer)
            preset = None
        masks = preset if preset is not None else self.method.initial_masks(ctx)
        if model is not None:
            model.zero_grad(set_to_none=True)
        if masks is not None:
            self.masks.set_masks(masks, optimizer)
            self._record("init", 0)
        self.initialized = True

    def reached_target(self) -> bool:
        """True once the masks are at the method's final sparsity (GMP: after its last event)."""
        return self.ctx is not None and self.method.reached_target(self.ctx, self.step)

    def before_optimizer_step(self) -> None:
        """Called once per optimizer step, after the last backward and before clipping."""
        if self.ctx is None:
            return
        upcoming = self.step + 1
        if self.method.wants_dense_gradients(self.ctx, upcoming):
            self.method.observe_dense_gradients(self.ctx, upcoming)
        self.masks.apply_to_grads()

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self.ctx is None:
            return
        if self.step_was_skipped():  # fp16 overflow: the weights did not move, nor does the schedule
            self.method.discard_dense_gradients()
            return
        self.step += 1
        self.masks.after_optimizer_step(optimizer)  # re-masks the weights unless the step kept pruned ones at 0
        new_masks = self.method.update_masks(self.ctx, self.step)
        if new_masks is not None:
            self.masks.set_masks(new_masks, optimizer)
            self._record("update", self.step)

    # ---- bookkeeping ------------------------------------------------------------------------

    def _record(self, kind: str, step: int) -> None:
        event = {"kind": kind, "step": step, "mask_sparsity": round(self.masks.sparsity(), 6)}
        self.events.append(event)
        logger.info(f"[{self.method.name}] {kind} at step {step}: mask sparsity {event['mask_sparsity']:.4f}")
        self._check_collapse(f"after the {self.method.name} {kind} at step {step} (mask sparsity "
                             f"{event['mask_sparsity']:.4f})")
        if self.collapsed:
            event["collapsed_layers"] = [c.name for c in self.collapsed]

    def _check_collapse(self, where: str) -> None:
        """Name the layers the masks leave (almost) empty: a warning when that set changes, or with
        `--on_layer_collapse error` a `LayerCollapseError` (a UsageError) before another step is trained."""
        collapsed = collapsed_layers(self.masks)
        if collapsed and self.on_layer_collapse == "error":
            raise LayerCollapseError(collapse_message(collapsed, where))
        if collapsed and [c.name for c in collapsed] != [c.name for c in self.collapsed]:
            logger.warning(collapse_message(collapsed, where))
        self.collapsed = collapsed

    def state_dict(self) -> dict[str, Any]:
        return {
            "method": self.method.name,
            "sparsity": self.method.sparsity.sparsity,
            "step": self.step,
            "initialized": self.initialized,
            "events": self.events,
            "method_state": self.method.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("method") != self.method.name:
            raise UsageError(
                f"checkpoint was written by --sparse_method {state.get('method')!r}, "
                f"but this run uses {self.method.name!r}; resume with the same method"
            )
        self.step = int(state["step"])
        self.initialized = bool(state["initialized"])
        self.events = list(state.get("events", []))
        self.method.load_state_dict(state.get("method_state", {}))

    def save(self, directory: str) -> None:
        with open(os.path.join(directory, STATE_NAME), "w", encoding="utf-8") as fh:
            json.dump(self.state_dict(), fh, indent=2)
        tensors = self.method.tensor_state()
        if tensors:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                      os.path.join(directory, TENSOR_STATE_NAME), metadata={"method": self.method.name})

    def load(self, directory: str) -> bool:
        """Restore masks and method state from a checkpoint folder; False if it holds none."""
        path = os.path.join(directory, STATE_NAME)
        if not os.path.isfile(path):
            return False
        with open(path, encoding="utf-8") as fh:
            self.load_state_dict(json.load(fh))
        tensor_path = os.path.join(directory, TENSOR_STATE_NAME)
        if os.path.isfile(tensor_path):
            device = self.masks.targets[0].param.device if self.masks.targets else "cpu"
            self.method.load_tensor_state(load_file(tensor_path, device=str(device)))
        self.masks.load(directory)
        return True
