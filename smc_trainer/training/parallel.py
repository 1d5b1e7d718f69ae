"""Which parallel back-ends the sparse methods support, checked before any model is loaded.

DDP (`accelerate launch --multi_gpu --num_processes N`, `torchrun`) supports every method: each
process holds whole weights, DDP all-reduces the gradients inside the last backward of an optimizer
step, and every mask is computed from inputs that are identical on all processes (DESIGN invariant
5; tests/training/test_distributed.py).

The sharded back-ends support no sparse method, so they are refused for all but `dense`:

- FSDP (`--fsdp`, or `accelerate launch --use_fsdp`; v2 `fully_shard` or v1 `use_orig_params=True`):
  outside forward/backward each process holds only a shard of every weight. FSDP2 replaces the
  parameters with sharded DTensors (the masks would act on stale tensors: silently dense training);
  FSDP1 turns them into views of the local flat shard (whole-weight masks no longer fit, and
  magnitude or gradient selection would rank one shard per process instead of the whole model).
- DeepSpeed ZeRO, any stage (`--deepspeed`, or `accelerate launch --use_deepspeed`): accelerate's
  `backward` runs `engine.step()` at the accumulation boundary, before any hook could mask the
  gradients or RigL could read them, and the optimizer updates its own fp32 master partitions,
  which masking the model's weights does not reach.

The pipeline's multi-stage runs also need two collectives of their own (`wait_for_all`,
`decided_by_main`), so that one process decides about shared files and the others follow.
"""

from __future__ import annotations

import os
from typing import TypeVar

import torch.distributed as dist

from smc_trainer.errors import UsageError

T = TypeVar("T")

SHARDED_BACKENDS = {
    "deepspeed": ("--deepspeed", "ACCELERATE_USE_DEEPSPEED", "DeepSpeed ZeRO steps the optimizer inside backward and "
                  "keeps its own fp32 master weights, so gradients cannot be masked nor pruned weights held at zero"),
    "fsdp": ("--fsdp", "ACCELERATE_USE_FSDP", "FSDP shards every weight, so whole-weight masks and global selection "
             "do not apply to the tensors the optimizer updates"),
}


def _env_true(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def requested_sharded_backend(args) -> str | None:
    """'deepspeed' or 'fsdp' when the flags, or `accelerate launch --use_deepspeed/--use_fsdp` (which set
    ACCELERATE_USE_*; accelerate reads them when the Trainer is built), ask for one; else None."""
    if getattr(args, "deepspeed", None) or _env_true("ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    if getattr(args, "fsdp", None) or _env_true("ACCELERATE_USE_FSDP"):
        return "fsdp"
    return None


def refuse_sharded_backend(method: str, backend: str | None) -> None:
    """ValueError if `backend` (deepspeed, fsdp or None) cannot train `--sparse_method method`."""
    if backend is None or method == "dense":
        return
    flag, env, reason = SHARDED_BACKENDS[backend]
    raise UsageError(
        f"--sparse_method {method} does not support {backend} ({flag}, or accelerate launch setting {env}): "
        f"{reason}. Train sparse methods with DDP instead (accelerate launch --multi_gpu --num_processes N, or "
        "torchrun), where every method is supported; dense runs may use sharded back-ends."
    )


def check_parallel_support(args) -> None:
    """Refuse sharded back-ends for sparse methods (called from argument validation, before any model loads)."""
    refuse_sharded_backend(args.sparse_method, requested_sharded_backend(args))


# ---- collectives for multi-stage runs ---------------------------------------------------------------
# torch.distributed directly, not accelerate's shared state: any TrainingArguments that one process builds
# and sets up mid-run (e.g. to render a reproduce command) resets that state to a single process there.


def _multi_process() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def wait_for_all() -> None:
    """A barrier over all processes; a no-op in a single process."""
    if _multi_process():
        dist.barrier()


def decided_by_main(value: T) -> T:
    """The main process's `value` on every process (pickled broadcast); `value` itself in a single process."""
    if not _multi_process():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
