"""Check, on a machine with GPUs, the one prerequisite that blocks sparse FSDP2 on CPU (docs/scale_out.md).

    accelerate launch --use_fsdp --fsdp_version 2 --num_processes 2 scripts/check_fsdp2_gpu.py [--out report.json]

(`--num_processes 1` works on a one-GPU machine: FSDP2 then shards over one rank, which still shows
whether accelerate wraps the model.) On CPU, accelerate 1.16 keeps `DistributedType.MULTI_CPU` and
wraps the model in DDP even with `--use_fsdp --fsdp_version 2`, so sparse FSDP2 cannot be built on
accelerate there. This script reports, per process: the versions, accelerate's distributed type,
whether the prepared model's weights are sharded DTensors (what masks would have to mirror), that one
dense AdamW step runs, and that smc-trainer still refuses a sparse method under FSDP with its clear
message. Exit status 0 when FSDP2 is active and the refusal holds; 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import accelerate
import torch
import transformers
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's smc_trainer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="also write the main process's report here (JSON)")
    ns = parser.parse_args()
    accelerator = Accelerator()
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 8))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    weight = next(model.parameters())
    placements = [str(p) for p in getattr(weight, "placements", ())]
    inputs = torch.randn(4, 64, device=accelerator.device)
    accelerator.backward(model(inputs).square().mean())
    optimizer.step()
    report = {
        "process": accelerator.process_index, "world_size": accelerator.num_processes,
        "torch": torch.__version__, "accelerate": accelerate.__version__, "transformers": transformers.__version__,
        "device": str(accelerator.device), "distributed_type": str(accelerator.distributed_type),
        "is_fsdp2": bool(getattr(accelerator, "is_fsdp2", False)), "model_class": type(model).__name__,
        "weight_class": type(weight).__name__, "weight_placements": placements, "dense_step": True,
        "sparse_refusal": sparse_refusal(),
    }
    print(json.dumps(report), flush=True)
    if ns.out and accelerator.is_main_process:
        with open(ns.out, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
    ok = report["is_fsdp2"] and report["weight_class"] == "DTensor" and report["sparse_refusal"] is not None
    return 0 if ok else 1


def sparse_refusal() -> str | None:
    """The message smc-trainer gives a sparse method under this launch (None: not refused, which is a bug)."""
    from smc_trainer.training.arguments import SparseTrainingArguments

    try:
        SparseTrainingArguments(output_dir="/tmp/unused-fsdp2-check", sparse_method="gmp", sparsity=0.5)
    except ValueError as err:
        return str(err)
    return None


if __name__ == "__main__":
    sys.exit(main())
