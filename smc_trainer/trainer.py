"""SparseTrainer: `transformers.Trainer` plus a MaskSet, a sparse method and its callback.

It derives from `Seq2SeqTrainer`, which is the plain Trainer unless `--predict_with_generate` is
set; then evaluation decodes with `model.generate` (translation, arithmetic equations).

The subclass overrides only what has no callback hook: masking gradients right after the last
backward of an optimizer step (before clipping), computing SNIP gradients with the Trainer's own
loss, and writing/reading masks and method state with every model save and checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from transformers import Seq2SeqTrainer
from transformers.utils import logging

from smc_trainer.arguments import SparseTrainingArguments
from smc_trainer.callbacks import SparsityCallback
from smc_trainer.masks import MaskSet
from smc_trainer.methods import get_method_class
from smc_trainer.targets import targets_for_args

logger = logging.get_logger(__name__)


class SparseTrainer(Seq2SeqTrainer):
    """A Trainer that trains a sparse model with the method named by `args.sparse_method`.

    `initial_masks` (bool tensors by parameter name) replaces the method's own initial pruning; the
    pipeline uses it for LTH/LRR rounds, whose masks come from the previous round's weights.
    """

    def __init__(self, model: torch.nn.Module | None = None, args: SparseTrainingArguments | None = None,
                 *pos: Any, initial_masks: Mapping[str, torch.Tensor] | None = None, **kwargs: Any):
        if not isinstance(args, SparseTrainingArguments):
            raise TypeError(f"SparseTrainer needs SparseTrainingArguments; got {type(args).__name__}")
        if model is None:
            raise ValueError("SparseTrainer needs a model instance (model_init is not supported)")
        targets = targets_for_args(model, args)
        super().__init__(model, args, *pos, **kwargs)
        if self.is_deepspeed_enabled and args.sparse_method != "dense":
            raise ValueError("DeepSpeed is not supported with sparse methods: it steps the optimizer inside "
                             "backward, so gradients cannot be masked. Use DDP (accelerate launch) instead.")
        self.masks = MaskSet(targets)
        self.sparse_method = get_method_class(args.sparse_method)(args)
        self.sparsity_callback = SparsityCallback(
            self.sparse_method,
            self.masks,
            accumulate_gradients=self._accumulate_gradients,
            step_was_skipped=lambda: bool(self.accelerator.optimizer_step_was_skipped),
        )
        if initial_masks is not None:
            self.sparsity_callback.preset_masks = dict(initial_masks)
        self.add_callback(self.sparsity_callback)
        n_prunable = self.masks.total
        logger.info(f"smc-trainer: {args.sparse_method} at sparsity {args.sparsity} over {len(targets)} "
                    f"prunable weights ({n_prunable:,} values), distribution {args.distribution}")

    # ---- the one hook Trainer lacks: after the last backward, before clipping ----------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients:
            self.sparsity_callback.before_optimizer_step()
        return loss

    def _accumulate_gradients(self, n_batches: int) -> None:
        """Sum dense gradients of the first `n_batches` training batches (SNIP), leaving the data order intact."""
        model = self.model_wrapped
        dataloader = self.callback_handler.train_dataloader or self.get_train_dataloader()
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        model.train()
        model.zero_grad(set_to_none=True)
        batches = iter(dataloader)
        for i in range(n_batches):
            try:
                batch = next(batches)
            except StopIteration:
                raise ValueError(f"--snip_batches {n_batches} exceeds the {i} training batches available") from None
            inputs = self._prepare_inputs(batch)
            with self.compute_loss_context_manager():
                loss = self.compute_loss(model, inputs)
            self.accelerator.backward(loss)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)

    # ---- logging --------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs or "train_loss" in logs:
            logs.update(self.masks.measured_sparsity())
        super().log(logs, start_time)

    # ---- saving and resuming --------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model (plain safetensors, zeros in place), the bool masks, the report and method state."""
        super().save_model(output_dir, _internal_call)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            self.masks.save(output_dir, extra_report=self.sparsity_metadata())
            self.sparsity_callback.save(output_dir)

    def sparsity_metadata(self) -> dict[str, Any]:
        a = self.args
        return {
            "method": a.sparse_method,
            "target_sparsity": a.sparsity,
            "distribution": a.distribution,
            "prune_embeddings": a.prune_embeddings,
            "prune_heads": a.prune_heads,
            "prune_include": a.prune_include,
            "prune_exclude": a.prune_exclude,
            "optimizer_steps": self.sparsity_callback.step,
        }

    def _determine_best_metric(self, metrics, trial) -> bool:
        """Only checkpoints at the final sparsity compete for 'best' (the original GMP runs could pick an
        early, denser checkpoint)."""
        if not self.sparsity_callback.reached_target():
            return False
        return super()._determine_best_metric(metrics, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.sparsity_callback.load(resume_from_checkpoint):
            logger.info(f"Restored masks and {self.args.sparse_method} state (step {self.sparsity_callback.step}) "
                        f"from {resume_from_checkpoint}")

    def _load_best_model(self) -> None:
        super()._load_best_model()
        best = self.state.best_model_checkpoint
        if best and os.path.isdir(best):
            self.masks.load(best)
