"""2:4 releases on GPUs: linears whose weights keep 2 of every 4 inputs run through
`torch.sparse.to_sparse_semi_structured` (sparse tensor cores, NVIDIA compute capability >= 8.0).

The saved release stays plain safetensors with exact zeros (it loads everywhere); `--export_semi_structured`
records `"semi_structured": "2:4"` in its sparsity config, and `load_sparse_pretrained(...,
semi_structured=True)` converts the 2:4 linears on load. Every other device is refused with the reason.
"""

from __future__ import annotations

import torch
from torch import nn

from smc_trainer.engine.patterns import NMPattern, nm_violations
from smc_trainer.errors import UsageError

TWO_FOUR = NMPattern(2, 4)
MIN_CAPABILITY = (8, 0)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)


def semi_structured_unavailable(device: torch.device | str | None = None) -> str | None:
    """Why 2:4 semi-structured kernels cannot run on `device` (default: the current CUDA device), or None."""
    device = torch.device(device) if device is not None else torch.device("cuda")
    if device.type != "cuda":
        return (f"torch.sparse.to_sparse_semi_structured runs only on CUDA GPUs of compute capability >= 8.0; "
                f"the model is on {device.type}")
    if not torch.cuda.is_available():
        return ("torch.sparse.to_sparse_semi_structured needs a CUDA GPU of compute capability >= 8.0 "
                f"(Ampere or newer); this machine has none (torch {torch.__version__}, CUDA available: False)")
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return (f"torch.sparse.to_sparse_semi_structured needs compute capability >= 8.0; "
                f"{torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}")
    return None


def two_four_linears(model: nn.Module) -> list[str]:
    """Names of the nn.Linear modules whose weight keeps exactly 2 of every 4 inputs."""
    names = []
    for name, module in model.named_modules():
        linear = type(module) is nn.Linear and module.in_features % 4 == 0
        if linear and nm_violations(module.weight.detach() != 0, TWO_FOUR) == 0:
            names.append(name)
    return names


def to_semi_structured(model: nn.Module) -> list[str]:
    """Convert every 2:4 nn.Linear of `model` (on a capable GPU, fp16/bf16) to a semi-structured sparse weight, in
    place; returns the converted names. Refuses, before touching anything, where the kernels cannot run."""
    param = next(model.parameters())
    reason = semi_structured_unavailable(param.device)
    if reason is not None:
        raise UsageError(f"cannot run 2:4 linears: {reason}")
    if param.dtype not in SUPPORTED_DTYPES:
        raise UsageError(f"2:4 semi-structured kernels take float16 or bfloat16 weights; the model is {param.dtype} "
                         "(load it with dtype=torch.float16)")
    from torch.sparse import to_sparse_semi_structured

    names = two_four_linears(model)
    for name in names:
        module = model.get_submodule(name)
        module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
    return names
