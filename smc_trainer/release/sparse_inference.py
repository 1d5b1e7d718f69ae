"""Sparse inference on CPU: linears sparse enough to gain run as CSR sparse x dense matmuls; the rest stay dense.

Unstructured sparsity pays on a CPU only past a break-even: a CSR matmul does about 2 x (kept weights) x tokens
flops at a far lower rate than a dense GEMM. `benchmarks/bench_sparse_inference.py` measures it per shape
(BENCHMARKS.md, "Sparse CPU inference"); `BREAK_EVEN_SPARSITY` is the measured default, and
`to_sparse_inference(model, min_sparsity=...)` overrides it. The converted model computes what the dense model
with zeros computes (to float rounding: the sums run in another order), for inference only (no gradients).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from smc_trainer.errors import UsageError

BREAK_EVEN_SPARSITY = 0.8  # measured on MiniLM shapes, one core (BENCHMARKS.md); below it CSR is slower


class CSRLinear(nn.Module):
    """y = x W^T + b with W held as a CSR tensor; inference only."""

    def __init__(self, weight: Tensor, bias: Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight.detach().to_sparse_csr())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> CSRLinear:
        return cls(linear.weight, linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features).t()
        if self.bias is None:
            out = torch.sparse.mm(self.weight, rows)
        else:
            out = torch.sparse.addmm(self.bias.unsqueeze(1), self.weight, rows)
        return out.t().reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        nnz = self.weight.values().numel()
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"sparsity={1 - nnz / (self.in_features * self.out_features):.3f}"


def linear_sparsity(linear: nn.Linear) -> float:
    """Share of exact zeros in a linear's weight."""
    weight = linear.weight.detach()
    return 1.0 - int(torch.count_nonzero(weight)) / weight.numel()


def to_sparse_inference(model: nn.Module, min_sparsity: float = BREAK_EVEN_SPARSITY) -> dict[str, float]:
    """Replace, in place, every nn.Linear whose weight is at least `min_sparsity` zeros by a `CSRLinear`; returns
    {module name: sparsity} of the converted ones. CPU only (CSR kernels elsewhere have other break-evens)."""
    if not 0.0 <= min_sparsity <= 1.0:
        raise UsageError(f"min_sparsity must be in [0, 1]; got {min_sparsity}")
    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        raise UsageError(f"sparse inference converts linears to CPU CSR kernels; the model is on {sorted(devices)}")
    converted: dict[str, float] = {}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is not nn.Linear:
                continue
            sparsity = linear_sparsity(child)
            if sparsity >= min_sparsity:
                setattr(module, child_name, CSRLinear.from_linear(child))
                converted[f"{name}.{child_name}" if name else child_name] = sparsity
    model.eval()
    return converted
