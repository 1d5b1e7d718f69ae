"""Sparse inference on CPU: linears sparse enough to gain run as CSR sparse x dense matmuls; the rest stay dense.

Unstructured sparsity pays on a CPU only past a break-even: a CSR matmul does about 2 x (kept weights) x tokens
flops at a far lower rate than a dense GEMM. `benchmarks/bench_sparse_inference.py` measures it per shape
(BENCHMARKS.md, "Sparse CPU inference"); `BREAK_EVEN_SPARSITY` is the measured default, and
`to_sparse_inference(model, min_sparsity=...)` overrides it, and `measure_tokens=N` times each candidate
linear dense and sparse on this machine and converts only those that run faster. The converted model computes
what the dense model with zeros computes (to float rounding: the sums run in another order), for inference only
(no gradients).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from smc_trainer.errors import UsageError

# end to end on MiniLM, one core, the whole model is no faster below it (BENCHMARKS.md); a single linear breaks even
# near 70% at 256 tokens, but every converted linear also pays for transposing its input and output
BREAK_EVEN_SPARSITY = 0.8
MEASURE_TOKENS = 256  # probe rows for the per-layer micro-benchmark of to_sparse_inference(measure_tokens=...)


class CSRLinear(nn.Module):
    """y = x W^T + b with W held as a CSR tensor; inference only.

    The product runs as an `embedding_bag` over the transposed input rather than `torch.sparse.addmm`: each output
    feature is a bag, its kept input features the looked-up rows of X^T (one contiguous row of all tokens each),
    its kept weights the per-sample weights, summed. That is exactly CSR sparse x dense (the CSR arrays are the
    bag indices and offsets), and the embedding-bag kernel is faster than `torch.sparse.addmm` on MiniLM shapes
    (BENCHMARKS.md, "Sparse CPU inference"). Half-precision inputs are summed in float32 (torch's CSR kernels
    have no bfloat16 CPU matmul)."""

    def __init__(self, weight: Tensor, bias: Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.feature_major_output = False
        """True: return the [out, tokens] result transposed as a view (not contiguous), for a consumer that is an
        element-wise op followed by another CSRLinear, whose input transpose then costs nothing."""
        self.register_buffer("weight", weight.detach().to_sparse_csr())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> CSRLinear:
        return cls(linear.weight, linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        compute = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32  # half: sums in float32
        table = x.reshape(-1, self.in_features).t().to(compute).contiguous()  # [in, tokens]: row i is feature i
        weight = self.weight
        bags = F.embedding_bag(weight.col_indices(), table, weight.crow_indices()[:-1], mode="sum",
                               per_sample_weights=weight.values().to(compute))  # [out, tokens]
        if self.bias is not None:  # on the contiguous [out, tokens] result: adding into a transposed layout is slow
            bags.add_(self.bias.to(compute).unsqueeze(1))
        out = bags.t().to(x.dtype)
        return out.view(*x.shape[:-1], self.out_features) if self.feature_major_output else \
            out.contiguous().view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        nnz = self.weight.values().numel()
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"sparsity={1 - nnz / (self.in_features * self.out_features):.3f}"


def linear_sparsity(linear: nn.Linear) -> float:
    """Share of exact zeros in a linear's weight."""
    weight = linear.weight.detach()
    return 1.0 - int(torch.count_nonzero(weight)) / weight.numel()


def faster_as_csr(linear: nn.Linear, tokens: int, repeats: int = 3,
                  clock: Callable[[], float] = time.perf_counter) -> bool:
    """Whether `linear` runs faster as a `CSRLinear` than dense on `tokens` random input rows here (fastest of
    `repeats` timings each): the break-even measured on this machine, for this shape and this weight."""
    x = torch.randn(tokens, linear.in_features, dtype=linear.weight.dtype)
    candidate = CSRLinear.from_linear(linear)

    def fastest(fn: Callable[[], Tensor]) -> float:
        fn()
        best = float("inf")
        for _ in range(repeats):
            start = clock()
            fn()
            best = min(best, clock() - start)
        return best

    with torch.no_grad():
        return fastest(lambda: candidate(x)) < fastest(lambda: linear(x))


def to_sparse_inference(model: nn.Module, min_sparsity: float = BREAK_EVEN_SPARSITY,
                        measure_tokens: int | None = None) -> dict[str, float]:
    """Replace, in place, every nn.Linear whose weight is at least `min_sparsity` zeros by a `CSRLinear`; returns
    {module name: sparsity} of the converted ones. With `measure_tokens`, a linear past `min_sparsity` is converted
    only if a micro-benchmark on that many tokens finds it faster (`faster_as_csr`): a per-layer break-even
    measured on the machine that runs the model. BERT-family feed-forward blocks with both projections converted
    pass their hidden activations feature-major (`chain_feed_forward`). CPU only (CSR kernels elsewhere have other
    break-evens)."""
    if not 0.0 <= min_sparsity <= 1.0:
        raise UsageError(f"min_sparsity must be in [0, 1]; got {min_sparsity}")
    if measure_tokens is not None and measure_tokens < 1:
        raise UsageError(f"measure_tokens must be >= 1 (or None: no measurement); got {measure_tokens}")
    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        raise UsageError(f"sparse inference converts linears to CPU CSR kernels; the model is on {sorted(devices)}")
    converted: dict[str, float] = {}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is not nn.Linear:
                continue
            sparsity = linear_sparsity(child)
            if sparsity < min_sparsity or (measure_tokens is not None and not faster_as_csr(child, measure_tokens)):
                continue
            setattr(module, child_name, CSRLinear.from_linear(child))
            converted[f"{name}.{child_name}" if name else child_name] = sparsity
    chain_feed_forward(model, converted)
    model.eval()
    return converted


FEED_FORWARD = ("intermediate.dense", "output.dense")  # BERT-family: in-projection -> activation -> out-projection


def chain_feed_forward(model: nn.Module, converted: Mapping[str, float]) -> list[str]:
    """Where a BERT-family feed-forward block has both projections converted, let the first return its result
    feature-major: the element-wise activation between them keeps that layout, so neither the first's output
    transpose nor the second's input transpose is copied (the two largest of the layer). Returns the names."""
    first, second = FEED_FORWARD
    chained = []
    for name in converted:
        if name.endswith(first) and name[: -len(first)] + second in converted:
            module = model.get_submodule(name)
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            if isinstance(module, CSRLinear) and _elementwise_activation(parent):
                module.feature_major_output = True
                chained.append(name)
    return chained


def _elementwise_activation(block: nn.Module) -> bool:
    """A BERT-style intermediate block: its forward is dense -> `intermediate_act_fn`, an element-wise function."""
    act = getattr(block, "intermediate_act_fn", None)
    return act is not None and set(dict(block.named_children())) <= {"dense", "intermediate_act_fn"}
