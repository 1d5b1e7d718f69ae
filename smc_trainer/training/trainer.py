"""SparseTrainer: `transformers.Trainer` plus a MaskSet, a sparse method and its callback.

It derives from `Seq2SeqTrainer`, which is the plain Trainer unless `--predict_with_generate` is
set; then evaluation decodes with `model.generate` (translation, arithmetic equations).

The subclass overrides only what has no callback hook: masking gradients right after the last
backward of an optimizer step (before clipping), computing SNIP gradients with the Trainer's own
loss, and writing/reading masks and method state with every model save and checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from transformers import Seq2SeqTrainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput, rotate_checkpoints
from transformers.utils import logging

from smc_trainer.engine.masks import MaskSet
from smc_trainer.engine.patterns import check_pattern_shapes, parse_pattern
from smc_trainer.engine.sparsity import SparsityConfig
from smc_trainer.engine.targets import is_decoder_lm, unwrap_adapters
from smc_trainer.errors import UsageError
from smc_trainer.methods import get_method_class
from smc_trainer.release.hub import check_push_args, check_release_dir, push_sparse_folder, write_release_files
from smc_trainer.training.arguments import SparseTrainingArguments
from smc_trainer.training.calibration import HookCalibrator, calibration_batches
from smc_trainer.training.callbacks import SparsityCallback
from smc_trainer.training.checkpoints import clear_manifest, resolve_resume_checkpoint, write_manifest
from smc_trainer.training.distillation import Distiller
from smc_trainer.training.loss_scaling import loss_uses_num_items
from smc_trainer.training.lr_rewind import rewinding_scheduler
from smc_trainer.training.parallel import refuse_sharded_backend

logger = logging.get_logger(__name__)


def _is_adapter_model(model: torch.nn.Module) -> bool:
    """A peft model (by duck typing: peft is imported only by runs that use it)."""
    return hasattr(model, "peft_config") and callable(getattr(model, "get_base_model", None))


def _prepare_adapters(model: torch.nn.Module, args: SparseTrainingArguments) -> torch.nn.Module:
    """Wrap a plain model for `--peft lora`; refuse a method that must train the frozen base of an adapter model.
    A user's own PeftModel is checked and its LoRA layers converted to masked ones (adapters/convert.py)."""
    refusal = get_method_class(args.sparse_method).lora_refusal(args)
    if refusal:
        raise UsageError(refusal)
    if _is_adapter_model(model):
        from smc_trainer.training.adapters.convert import prepare_user_peft_model
        from smc_trainer.training.adapters.wrap import train_head_copies

        prepare_user_peft_model(model, args)

        unfrozen = train_head_copies(model)
        if unfrozen:
            logger.warning("your PeftModel's modules_to_save copies had frozen parameters (peft matches those names "
                           f"by suffix and wraps nested modules of the same name); made them trainable: {unfrozen}")
        return model
    from smc_trainer.training.adapters import wrap_with_lora

    return wrap_with_lora(model, args)


def trains_no_steps(args: Any) -> bool:
    """`--max_steps 0`, or no --max_steps and `--num_train_epochs 0` (the dense stage of a one-shot recipe: the
    pretrained model as it is): the run prunes and evaluates without an optimizer step."""
    return args.max_steps == 0 or (args.max_steps < 0 and args.num_train_epochs == 0)


class SparseTrainer(Seq2SeqTrainer):
    """A Trainer that trains a sparse model with the method named by `args.sparse_method`.

    `initial_masks` (bool tensors by parameter name) replaces the method's own initial pruning; the
    pipeline uses it for LTH/LRR rounds, whose masks come from the previous round's weights.
    `lr_scheduler_factory(optimizer, num_training_steps)` builds the LR scheduler instead of
    `--lr_scheduler_type` (a task's own schedule, e.g. OneCycle over per-module learning rates), and
    `optimizer_cls_and_kwargs` reaches `Trainer` (which `Seq2SeqTrainer.__init__` does not forward).
    `teacher`: the model `--distill_teacher` names, already loaded (the pipeline loads the dense fine-tune).
    `calibration_dataset`: examples for one-shot calibration instead of the training split (`--calibration_file`,
    prepared by the task like its training split).
    """

    def __init__(self, model: torch.nn.Module | None = None, args: SparseTrainingArguments | None = None,
                 *pos: Any, initial_masks: Mapping[str, torch.Tensor] | None = None,
                 lr_scheduler_factory: Callable[[torch.optim.Optimizer, int], Any] | None = None,
                 optimizer_cls_and_kwargs: tuple[Any, dict[str, Any]] | None = None,
                 teacher: torch.nn.Module | None = None, calibration_dataset: Any = None, **kwargs: Any):
        if not isinstance(args, SparseTrainingArguments):
            raise TypeError(f"SparseTrainer needs SparseTrainingArguments; got {type(args).__name__}")
        if model is None:
            raise UsageError("SparseTrainer needs a model instance (model_init is not supported)")
        check_push_args(args)  # before Trainer.__init__ reaches for the Hub
        if args.peft == "lora" or _is_adapter_model(model):
            model = _prepare_adapters(model, args)
        if args.peft == "lora" and args.lora_learning_rate is not None:  # the adapters' own rate; --learning_rate
            args = dataclasses.replace(args, learning_rate=args.lora_learning_rate)  # stays the dense cache's
        # adapters seen through: the plain model's weights and names
        targets = SparsityConfig.from_flags(args).targets(model)
        pattern = parse_pattern(args.sparsity_pattern)
        if pattern is not None:
            check_pattern_shapes(targets, pattern)
        self.lr_scheduler_factory = lr_scheduler_factory
        if args.calibration_file is not None and calibration_dataset is None:
            raise UsageError(f"--calibration_file {args.calibration_file}: SparseTrainer needs its examples prepared "
                             "by the task as calibration_dataset= (run_smc.py and smc_trainer.runs.pipeline do this)")
        self.calibration_dataset = calibration_dataset  # --calibration_file's examples (None: the training split)
        super().__init__(model, args, *pos, **kwargs)
        self._normalize_mean_losses_per_micro_batch()
        if optimizer_cls_and_kwargs is not None:
            if self.optimizer is not None:
                raise RuntimeError("Passing both `optimizers` and `optimizer_cls_and_kwargs` is incompatible.")
            self.optimizer_cls_and_kwargs = optimizer_cls_and_kwargs
        # argument validation refused these already; this catches a back-end configured some other way
        refuse_sharded_backend(args.sparse_method, "deepspeed" if self.is_deepspeed_enabled
                               else "fsdp" if self.is_fsdp_enabled else None)
        self._loss_scale_before_step: float | None = None
        self.masks = MaskSet(targets)
        self.adapter_base: str | None = None  # what an adapter release sits on (the pipeline names it)
        if _is_adapter_model(model):
            from smc_trainer.training.adapters import bind_masks, check_adapter_layers

            check_adapter_layers(model, targets, args.sparse_adapter)
            bind_masks(model, self.masks, straight_through=args.adapter_gradient == "straight_through")
        self.sparse_method = get_method_class(args.sparse_method).from_args(args)
        self.sparsity_callback = SparsityCallback(
            self.sparse_method,
            self.masks,
            accumulate_gradients=self._accumulate_gradients,
            step_was_skipped=self._optimizer_step_was_skipped,
            calibrator=HookCalibrator(self.model, lambda: calibration_batches(self),
                                      cache_bytes=getattr(args, "calibration_cache_gb", 2.0) * 2**30),
            gradient_batches=self._gradient_batches,
            batches_per_pass=lambda: len(self.callback_handler.train_dataloader or self.get_train_dataloader()),
            on_layer_collapse=getattr(args, "on_layer_collapse", "warn"),
        )
        if initial_masks is not None:
            self.sparsity_callback.preset_masks = dict(initial_masks)
        self.sparsity_callback.prune_within_preset = self.sparse_method.prunes_in_trainer(args)
        self.distiller = self._make_distiller(args, teacher, model)
        self.add_callback(self.sparsity_callback)
        n_prunable = self.masks.total
        logger.info(f"smc-trainer: {args.sparse_method} at sparsity {args.sparsity} over {len(targets)} "
                    f"prunable weights ({n_prunable:,} values), distribution {args.distribution}")

    # ---- the one hook Trainer lacks: after the last backward, before clipping ----------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients:
            scaler = self.accelerator.scaler
            self._loss_scale_before_step = scaler.get_scale() if scaler is not None else None
            self.sparsity_callback.before_optimizer_step()
        return loss

    def _optimizer_step_was_skipped(self) -> bool:
        """Whether the fp16 grad scaler skipped the optimizer step that just ran (inf/NaN gradients).

        accelerate's `optimizer_step_was_skipped` misses the skips of optimizers that unscale inside their own
        step, such as fused AdamW, the default `adamw_torch_fused` (huggingface/accelerate#4242). GradScaler
        lowers its scale exactly when it found inf/NaN gradients, so a lower scale marks a skipped step too.
        """
        if self.accelerator.optimizer_step_was_skipped:
            return True
        scaler, before = self.accelerator.scaler, self._loss_scale_before_step
        return scaler is not None and before is not None and scaler.get_scale() < before

    def _accumulate_gradients(self, n_batches: int) -> None:
        """Sum dense gradients of the first `n_batches` training batches (SNIP), leaving the data order intact."""
        model = self.model_wrapped
        dataloader = self.callback_handler.train_dataloader or self.get_train_dataloader()
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        model.train()
        model.zero_grad(set_to_none=True)
        frozen = [t.param for t in self.masks.targets if not t.param.requires_grad]  # a LoRA run's base
        for param in frozen:
            param.requires_grad_(True)
        batches = iter(dataloader)
        for i in range(n_batches):
            try:
                batch = next(batches)
            except StopIteration:
                raise UsageError(f"--snip_batches {n_batches} exceeds the {i} training batches available") from None
            inputs = self._prepare_inputs(batch)
            with self.compute_loss_context_manager():
                loss = self.task_loss(model, inputs)
            self.accelerator.backward(loss)
        for param in frozen:
            param.requires_grad_(False)
            if param.grad is not None and self.accelerator.num_processes > 1:  # outside DDP's reducer: average here
                param.grad = self.accelerator.reduce(param.grad, reduction="mean")
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)

    def _gradient_batches(self, n_batches: int | None) -> Iterator[None]:
        """Yield after each of the first `n_batches` training batches (None: all) with that batch's dense gradients
        in `.grad` (oBERT's gradient samples), leaving the data order and RNG intact."""
        model = self.model_wrapped
        dataloader = self.callback_handler.train_dataloader or self.get_train_dataloader()
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        model.train()
        try:
            for i, batch in enumerate(dataloader):
                if n_batches is not None and i >= n_batches:
                    break
                model.zero_grad(set_to_none=True)
                inputs = self._prepare_inputs(batch)
                with self.compute_loss_context_manager():
                    loss = self.task_loss(model, inputs)
                self.accelerator.backward(loss)
                yield
        finally:
            model.zero_grad(set_to_none=True)
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)

    def _normalize_mean_losses_per_micro_batch(self) -> None:
        """A model that declares **kwargs but returns a per-micro-batch mean loss (loss_scaling.py) gets the
        Trainer's documented `model_accepts_loss_kwargs = False`: its loss is then divided by the accumulation
        steps and averaged over processes like any mean loss, instead of coming out that many times too large."""
        inner = unwrap_adapters(self.model)
        if self.model_accepts_loss_kwargs and loss_uses_num_items(inner) is False:
            self.model_accepts_loss_kwargs = False
            logger.info(f"smc-trainer: {type(inner).__name__} returns a mean loss and ignores "
                        "num_items_in_batch (huggingface/transformers#47688): normalizing it per micro-batch")

    # ---- distillation (smc_trainer/training/distillation.py) ----------------------------------------------

    @staticmethod
    def _make_distiller(args: SparseTrainingArguments, teacher: torch.nn.Module | None,
                        model: torch.nn.Module) -> Distiller | None:
        if args.distill_teacher == "none":
            if teacher is not None:
                raise UsageError("a teacher model was passed but --distill_teacher is none")
            return None
        if teacher is None:
            raise UsageError(f"--distill_teacher {args.distill_teacher} needs the teacher model: run through "
                             "run_smc.py (which loads it), or pass teacher= to SparseTrainer")
        distiller = Distiller(teacher, args.distill_hardness, args.distill_temperature)
        distiller.prepare(args.device, next(model.parameters()).dtype)
        return distiller

    def task_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        """The Trainer's own loss of the task (no distillation): what criteria take gradients of."""
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        """The task loss, mixed with the distillation term while training when --distill_teacher is set."""
        if self.distiller is None or not model.training:
            return self.task_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.get("labels")  # before the Trainer's loss may pop it (label smoothing)
        teacher_logits = self.distiller.teacher_logits(inputs)
        loss, outputs = self.task_loss(model, inputs, True, num_items_in_batch)
        loss = self.distiller.loss(loss, outputs, teacher_logits, labels, self._kd_normalizer(num_items_in_batch))
        return (loss, outputs) if return_outputs else loss

    def _kd_normalizer(self, num_items_in_batch) -> float | torch.Tensor | None:
        """What the Trainer divides the task loss by: `num_items_in_batch` when it normalizes over the whole
        accumulated batch (then per device), else None (a per-micro-batch mean)."""
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or \
                self.compute_loss_func is not None
        if not scaled or num_items_in_batch is None:
            return None
        if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs:
            return num_items_in_batch / self.accelerator.num_processes
        return num_items_in_batch

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """--lr_rewind's cyclic schedule, else the task's `lr_scheduler_factory` schedule, else the Trainer's.

        --lr_rewind replaces a task's own schedule (protein's OneCycle, GTS's StepLR), said in the log: it scales
        each parameter group's own rate, so a task's per-module learning rates are kept."""
        if self.args.lr_rewind and self.lr_scheduler is not None and not getattr(self, "_created_lr_scheduler", False):
            raise UsageError("--lr_rewind replaces the LR schedule, and a scheduler was passed to the Trainer "
                             "(optimizers=(optimizer, scheduler)); pass (optimizer, None) or drop --lr_rewind")
        if self.lr_scheduler is None and self.args.lr_rewind:
            if self.lr_scheduler_factory is not None:
                logger.warning(f"--lr_rewind: the rewinding schedule replaces this task's own "
                               f"({type(self.lr_scheduler_factory).__name__}); each group keeps its learning rate")
            shape = getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type)
            self.lr_scheduler = rewinding_scheduler(
                optimizer or self.optimizer, shape, self.sparse_method.pruning_steps(num_training_steps),
                num_training_steps, self.args.lr_rewind_final_ratio, self.args.get_warmup_steps(num_training_steps))
            self._created_lr_scheduler = True
        if self.lr_scheduler is None and self.lr_scheduler_factory is not None:
            self.lr_scheduler = self.lr_scheduler_factory(optimizer or self.optimizer, num_training_steps)
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)

    # ---- logging --------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs or "train_loss" in logs:
            logs.update(self.masks.measured_sparsity())
        super().log(logs, start_time)

    # ---- saving and resuming --------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model (plain safetensors, zeros in place), the bool masks, the report and method state.

        A LoRA run's checkpoints hold the adapter (resumable); any other save is its release (`--lora_release`)."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if _is_adapter_model(self.model) and not getattr(self, "_saving_checkpoint", False):
            if self.args.should_save:
                from smc_trainer.training.adapters import save_lora_release

                save_lora_release(self.model, output_dir, self.args.lora_release, self.masks.masks,
                                  sparse_adapter=self.args.sparse_adapter, processing_class=self.processing_class)
        else:
            super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            self.masks.save(output_dir, extra_report=self.sparsity_metadata())
            self.sparsity_callback.save(output_dir)

    def sparsity_metadata(self) -> dict[str, Any]:
        """What the release records of its sparsity. An lth/lrr round below its --sparsity_pattern (`imp_round`)
        is unstructured with a floor of N of every M, so it records that, not the pattern it is on the way to."""
        a = self.args
        below_pattern = a.imp_round is not None
        return {
            "method": a.sparse_method,
            "target_sparsity": a.sparsity,
            "distribution": a.distribution,
            "prune_embeddings": a.prune_embeddings,
            "prune_heads": a.prune_heads,
            "prune_include": a.prune_include,
            "prune_exclude": a.prune_exclude,
            "prune_modules": a.prune_modules,
            **({"decoder_blocks_only": True} if is_decoder_lm(self.model) else {}),  # embeddings, lm_head dense
            "sparsity_pattern": "unstructured" if below_pattern else a.sparsity_pattern,
            "semi_structured": a.export_semi_structured and not below_pattern,
            **({"imp_round": a.imp_round, "pattern_floor": a.sparsity_pattern} if below_pattern else {}),
            "optimizer_steps": self.sparsity_callback.step,
            **({"criterion": self.sparse_method.criterion.name} if self.sparse_method.criterion is not None else {}),
            **({"preset": a.method_preset} if a.method_preset else {}),
            **({"distill_teacher": a.distill_teacher} if a.distill_teacher != "none" else {}),
            **({"lr_rewind": True} if a.lr_rewind else {}),
            "adapter": self.adapter_metadata(),
        }

    def adapter_metadata(self) -> dict[str, Any] | None:
        """What an adapter run (LoRA, or a user's IA3) trained and released (None for full fine-tuning)."""
        if not _is_adapter_model(self.model):
            return None
        from smc_trainer.training.adapters.convert import adapted_layers, peft_type

        config = next(iter(self.model.peft_config.values()))
        a = self.args
        return {"peft": peft_type(config).lower(), "r": getattr(config, "r", None),
                "lora_alpha": getattr(config, "lora_alpha", None),
                "lora_dropout": getattr(config, "lora_dropout", None),
                "target_modules": sorted(config.target_modules or []),  # peft may shorten them to name suffixes
                "adapted_modules": adapted_layers(self.model), "modules_to_save": config.modules_to_save,
                "sparse_adapter": a.sparse_adapter, "adapter_gradient": a.adapter_gradient, "release": a.lora_release,
                "base": self.adapter_base or getattr(self.model.get_base_model().config, "_name_or_path", None)}

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

    # ---- complete checkpoints only (smc_trainer/training/checkpoints.py) ---------------------------------

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs: Any):
        """`Trainer.train`, resuming only from complete checkpoints (True: the last complete one)."""
        if trains_no_steps(self.args):  # Trainer would run one step (or the epochs) for max_steps 0
            return self.prune_without_training()
        resume = resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
        result = super().train(resume_from_checkpoint=resume, trial=trial, **kwargs)
        if _is_adapter_model(self.model) and not self.args.sparse_adapter:
            self._merge_and_remask()
        return result

    def prune_without_training(self) -> TrainOutput:
        """`--max_steps 0`: install the method's initial masks (one-shot pruning, calibration included) and stop,
        so the pruned model is evaluated as it is, with no optimizer step."""
        started = time.time()
        self.state.max_steps = 0
        self.state.global_step = 0
        self.sparsity_callback.on_train_begin(self.args, self.state, self.control, model=self.model, optimizer=None)
        runtime = round(time.time() - started, 4)
        logger.info(f"--max_steps 0: pruned ({self.args.sparse_method}) without training in {runtime} s")
        return TrainOutput(0, 0.0, {"train_runtime": runtime})

    def _merge_and_remask(self) -> None:
        """Plain LoRA (`--sparse_adapter false`): merge the adapters into the base weights (peft's `merge_adapter`)
        and re-mask them, so evaluation and the release see the sparse model the run produces."""
        self.model.merge_adapter()
        filled = sum(int(torch.count_nonzero(t.param[~self.masks.masks[t.name]])) for t in self.masks.targets
                     if t.name in self.masks.masks)
        self.masks.apply_to_weights()
        logger.info(f"--sparse_adapter false: merged the adapters and re-masked {filled:,} pruned weights they had "
                    "filled")

    def _save_checkpoint(self, model, trial) -> None:
        """transformers' checkpoint, then its completion manifest as the very last write. Rotation of old
        checkpoints (`--save_total_limit`) is held back until the manifest exists, so a kill at any moment
        leaves at least one complete checkpoint."""
        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save:
            clear_manifest(folder)
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        self._saving_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
            self._saving_checkpoint = False
        self.accelerator.wait_for_everyone()  # every rank's files (RNG states) are written
        if self.args.should_save:
            write_manifest(folder, step=self.state.global_step)
            rotate_checkpoints(run_dir, limit, self.state.best_model_checkpoint, use_mtime=True)

    # ---- sparse release and the Hub (smc_trainer/release/hub.py) ----------------------------------------

    def save_sparse_pretrained(self, output_dir: str | None = None, metrics: Mapping[str, float] | None = None,
                               run_config: Any = None, compressed: bool | None = None, overwrite: bool = False) -> str:
        """The model plus everything a sparse release holds (masks, report, run config, sparsity in
        config.json, model card); see `smc_trainer.release.hub.save_sparse_pretrained`. A folder other than the
        run's own `output_dir` must be new or empty unless `overwrite` (a user's files are never replaced)."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save and os.path.abspath(output_dir) != os.path.abspath(self.args.output_dir):
            check_release_dir(output_dir, overwrite)
        self.save_model(output_dir, _internal_call=True)
        if self.args.should_save:
            write_release_files(output_dir, self.masks, self.sparsity_metadata(),
                                metrics=metrics if metrics is not None else self.latest_metrics(),
                                run_config=run_config if run_config is not None else self.args,
                                compressed=self.args.save_compressed if compressed is None else compressed)
        return output_dir

    def latest_metrics(self) -> dict[str, float]:
        """The newest value of every metric in the Trainer's log history (for the model card)."""
        merged: dict[str, float] = {}
        for entry in self.state.log_history:
            merged.update({k: v for k, v in entry.items() if isinstance(v, (int, float)) and k not in ("step",)})
        return merged

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True,
                    token: str | None = None, revision: str | None = None, private: bool | None = None,
                    **kwargs: Any):
        """Upload the sparse release of `output_dir` (not only the plain model) to `--hub_model_id`."""
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        token = token if token is not None else self.args.hub_token
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        self.save_sparse_pretrained(self.args.output_dir, metrics=kwargs.pop("metrics", None))
        if not self.is_world_process_zero():
            return None
        self._finish_current_push()
        return push_sparse_folder(self.args.output_dir, self.hub_model_id, token=token, create=False,
                                  revision=revision if revision is not None else self.args.hub_revision,
                                  commit_message=commit_message, run_as_future=not blocking)
