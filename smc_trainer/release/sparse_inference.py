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
from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from transformers.utils import logging

from smc_trainer.errors import UsageError

logger = logging.get_logger(__name__)

# measured first as the end-to-end break-even on MiniLM, one core (BENCHMARKS.md); since the per-sequence kernel the
# whole model breaks even near 60% and gains 1.2x at 70%, 2x at 80%: 0.8 is now a default with a margin
BREAK_EVEN_SPARSITY = 0.8
MEASURE_TOKENS = 256  # probe rows for the per-layer micro-benchmark of to_sparse_inference(measure_tokens=...)


SEQUENCE_BLOCK_MIN = 64
"""Inputs [..., S, in] with S >= this many tokens are multiplied one sequence at a time: each embedding bag then reads
an [in, S] table that stays in cache (1.3 to 2x faster per bag than one [in, all tokens] table on MiniLM shapes at
8 x 128 tokens, BENCHMARKS.md); shorter sequences, and 2-d inputs, run as one table of all tokens."""
MAX_REPEATED_INDICES = 1 << 19
"""The bag indices of one call are the CSR indices repeated per sequence, cached with their weights (8 bytes each):
past this many a batch runs in several calls, so the cache holds at most about 4 MB per linear and batch size (two
sizes: a full call and a remainder)."""


class _CSRBags:
    """A CSR weight [out, in] as embedding-bag inputs: each output feature a bag whose indices are its kept input
    features and whose per-sample weights are its kept weights. Multiplies tables [n, in, block] (n feature-major
    blocks of tokens) into [n, out, block] in one call, the indices repeated and shifted per block. The repeated
    arrays are cached for the last two values of n while the weight is the same and unmodified (an in-place
    `load_state_dict` bumps its version counters)."""

    def __init__(self):
        self._repeated: dict[tuple, tuple[Tensor, Tensor, Tensor]] = {}

    def __call__(self, weight: Tensor, bias: Tensor | None, table: Tensor) -> Tensor:
        per_call = max(1, MAX_REPEATED_INDICES // max(1, weight.values().numel()))
        if table.shape[0] > per_call:  # one more copy, past the cap only
            return torch.cat([self(weight, bias, part) for part in table.split(per_call)])
        (out_features, in_features), (n, _, block) = weight.shape, table.shape
        indices, offsets, weights = self._arrays(weight, n, table.dtype)
        bags = F.embedding_bag(indices, table.view(n * in_features, block), offsets, mode="sum",
                               per_sample_weights=weights).view(n, out_features, block)
        if bias is not None:  # on the contiguous [n, out, block] result: adding into a transposed layout is slow
            bags.add_(bias.to(table.dtype)[:, None])
        return bags

    def _arrays(self, weight: Tensor, n: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        crow, col, values = weight.crow_indices(), weight.col_indices(), weight.values()
        key = (n, dtype, values.data_ptr(), col.data_ptr(), _version(values), _version(col), _version(crow))
        if key not in self._repeated:
            if len(self._repeated) >= 2:  # a full call and a remainder: keep both, forget older batch sizes
                self._repeated.clear()
            nnz, in_features = values.numel(), weight.shape[1]
            index_dtype = torch.int32 if n * max(nnz, in_features) < 2**31 else torch.int64  # int32: ~3% faster
            shifts = torch.arange(n)[:, None]
            indices = (col[None] + shifts * in_features).flatten().to(index_dtype)
            offsets = (crow[None, :-1] + shifts * nnz).flatten().to(index_dtype)
            self._repeated[key] = (indices, offsets, values.to(dtype).repeat(n))
        return self._repeated[key]


def _feature_major_table(x: Tensor, in_features: int, compute: torch.dtype) -> Tensor:
    """x [..., in] as contiguous tables [n, in, block]: one per sequence when sequences are long enough
    (`SEQUENCE_BLOCK_MIN`), else one of all tokens. Free (a view) when x is already such a transposed view."""
    if x.dim() >= 3 and x.shape[-2] >= SEQUENCE_BLOCK_MIN:
        blocks = x.reshape(-1, x.shape[-2], in_features)
    else:
        blocks = x.reshape(1, -1, in_features)
    return blocks.transpose(1, 2).to(compute).contiguous()


def _token_major(bags: Tensor, x: Tensor, dtype: torch.dtype, transposed_view: bool) -> Tensor:
    """[n, out, block] bags back to x's layout [..., out]: copied contiguous, or as a transposed view."""
    out = bags.transpose(1, 2).to(dtype)
    return out.view(*x.shape[:-1], bags.shape[1]) if transposed_view else \
        out.contiguous().view(*x.shape[:-1], bags.shape[1])


def _version(x: Tensor) -> int | None:
    return None if x.is_inference() else x._version


def _compute_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32  # half: sums in float32


class CSRLinear(nn.Module):
    """y = x W^T + b with W held as a CSR tensor; inference only.

    The product runs as an `embedding_bag` over the transposed input rather than `torch.sparse.addmm`: each output
    feature is a bag, its kept input features the looked-up rows of X^T (one contiguous row of a sequence's tokens
    each), its kept weights the per-sample weights, summed. That is exactly CSR sparse x dense (the CSR arrays are the
    bag indices and offsets), and the embedding-bag kernel is faster than `torch.sparse.addmm` on MiniLM shapes
    (BENCHMARKS.md, "Sparse CPU inference"). Half-precision inputs are summed in float32 (torch's CSR kernels
    have no bfloat16 CPU matmul). A linear in a `SharedInputGroup` is computed by its group."""

    def __init__(self, weight: Tensor, bias: Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.feature_major_output = False
        """True: return the result as a transposed view (not contiguous), for a consumer that is an element-wise op
        followed by another CSRLinear, whose input transpose then costs nothing."""
        self.register_buffer("weight", weight.detach().to_sparse_csr())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.shared_input: SharedInputGroup | None = None
        self._bags = _CSRBags()

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> CSRLinear:
        return cls(linear.weight, linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.shared_input is not None:
            return self.shared_input.output(self, x)
        bags = self._bags(self.weight, self.bias, _feature_major_table(x, self.in_features, _compute_dtype(x)))
        return _token_major(bags, x, x.dtype, self.feature_major_output)

    def extra_repr(self) -> str:
        nnz = self.weight.values().numel()
        fused = "" if self.shared_input is None else \
            f", shared_input={'+'.join(n.rsplit('.', 1)[-1] for n in self.shared_input.names)}"
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"sparsity={1 - nnz / (self.in_features * self.out_features):.3f}{fused}"


class SharedInputGroup:
    """CSRLinears that read the same input tensor (query, key and value of a self-attention), multiplied as one CSR
    matrix: one input transpose and one embedding bag instead of one each. The first member called with an input
    computes every member's output; the others, called with that same tensor (same object, unmodified), take theirs
    from it. A member called with any other input recomputes, so a group is never wrong, only slower where its
    members stop sharing inputs (tensors made under `torch.inference_mode` have no version counter: there the same
    object suffices). Not a module: the members stay the model's modules, each with its own CSR weight and bias,
    which joining makes views of the group's concatenated arrays (stored once; an in-place `load_state_dict` into a
    member lands in the group; a member whose weight is replaced, e.g. by `.to()`, makes the group join again).
    Threads running one model at once stay correct but may recompute (each evicts the other's cached outputs)."""

    def __init__(self, names: list[str], members: list[CSRLinear]):
        if len({m.in_features for m in members}) != 1:
            raise ValueError(f"a shared-input group needs one in_features; got {[m.in_features for m in members]}")
        self.names, self.members = names, members
        self.splits = [m.out_features for m in members]
        self._index = {id(m): i for i, m in enumerate(members)}
        self._cached: tuple[Tensor, int | None, list[Tensor], set[int]] | None = None
        self._bags = _CSRBags()
        self._join()
        for member in members:
            member.shared_input = self

    def _join(self) -> None:
        """Concatenate the members' CSR rows and biases; give each member views of its part back."""
        weights = [m.weight for m in self.members]
        nnz = torch.tensor([0] + [w.values().numel() for w in weights]).cumsum(0).tolist()
        crow = torch.cat([weights[0].crow_indices()[:1]] + [w.crow_indices()[1:] + offset
                                                             for w, offset in zip(weights, nnz)])
        self.weight = torch.sparse_csr_tensor(crow, torch.cat([w.col_indices() for w in weights]),
                                              torch.cat([w.values() for w in weights]),
                                              (sum(self.splits), self.members[0].in_features), check_invariants=True)
        biases = [m.bias for m in self.members]
        self.bias = None if all(b is None for b in biases) else torch.cat(
            [torch.zeros(m.out_features, dtype=self.weight.dtype) if b is None else b.to(self.weight.dtype)
             for m, b in zip(self.members, biases)])
        rows = [0] + torch.tensor(self.splits).cumsum(0).tolist()
        col, values = self.weight.col_indices(), self.weight.values()
        for member, first, last, start, end in zip(self.members, rows[:-1], rows[1:], nnz[:-1], nnz[1:]):
            member.weight = torch.sparse_csr_tensor(crow[first:last + 1] - start, col[start:end], values[start:end],
                                                    (last - first, member.in_features), check_invariants=True)
            if member.bias is not None:
                member.bias = self.bias[first:last]
        self._joined = [m.weight for m in self.members]

    def output(self, member: CSRLinear, x: Tensor) -> Tensor:
        i = self._index[id(member)]
        cached = self._cached
        if cached is not None and cached[0] is x and cached[1] == _version(x) and i in cached[3]:
            cached[3].discard(i)
            if not cached[3]:
                self._cached = None  # every member served: hold no activations between forwards
            return cached[2][i]
        if any(m.weight is not w for m, w in zip(self.members, self._joined)):
            self._join()
        table = _feature_major_table(x, self.weight.shape[1], _compute_dtype(x))
        bags = self._bags(self.weight, self.bias, table)
        outputs = [_token_major(part, x, x.dtype, False) for part in bags.split(self.splits, dim=1)]
        self._cached = (x, _version(x), outputs, set(range(len(outputs))) - {i})
        return outputs[i]


def linear_sparsity(linear: nn.Linear) -> float:
    """Share of exact zeros in a linear's weight."""
    weight = linear.weight.detach()
    return 1.0 - int(torch.count_nonzero(weight)) / weight.numel()


def faster_as_csr(linear: nn.Linear, tokens: int, repeats: int = 3,
                  clock: Callable[[], float] = time.perf_counter) -> bool:
    """Whether `linear` runs faster as a `CSRLinear` than dense on `tokens` random input rows here (fastest of
    `repeats` timings each): the break-even measured on this machine, for this shape and this weight."""
    block = min(tokens, 128)  # in sequences of 128 tokens, the layout CSRLinear runs a real batch in
    x = torch.randn(-(-tokens // block), block, linear.in_features, dtype=linear.weight.dtype)
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
                        measure_tokens: int | None = None, example_inputs: Mapping[str, Any] | None = None,
                        fuse_shared_inputs: bool = True) -> dict[str, float]:
    """Replace, in place, every nn.Linear whose weight is at least `min_sparsity` zeros by a `CSRLinear`; returns
    {module name: sparsity} of the converted ones. With `measure_tokens`, a linear past `min_sparsity` is converted
    only if a micro-benchmark on that many tokens finds it faster (`faster_as_csr`): a per-layer break-even
    measured on the machine that runs the model. Converted linears that read the same input tensor in one forward
    of `example_inputs` (default: the model's `dummy_inputs`, where it has them) are multiplied as one matrix
    (`shared_input_groups`, `SharedInputGroup`: query, key and value of a self-attention). BERT-family
    feed-forward blocks with both projections converted pass their hidden activations feature-major
    (`chain_feed_forward`). CPU only (CSR kernels elsewhere have other break-evens)."""
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
    model.eval()
    chain_feed_forward(model, converted)
    if fuse_shared_inputs and converted:
        _fuse(model, converted, example_inputs)
    return converted


def _fuse(model: nn.Module, converted: Collection[str], example_inputs: Mapping[str, Any] | None) -> None:
    if example_inputs is not None:
        groups = shared_input_groups(model, example_inputs, converted)
    elif getattr(model, "dummy_inputs", None) is None:
        logger.info("sparse inference: no example inputs and no dummy_inputs; linears sharing an input stay apart")
        return
    else:
        try:
            groups = shared_input_groups(model, model.dummy_inputs, converted)
        except Exception as error:  # noqa: BLE001 - some heads reject the generic dummy batch; fusion is optional
            logger.warning(f"sparse inference: the model's dummy_inputs do not run ({error}); linears sharing an "
                           "input stay apart (pass example_inputs to fuse them)")
            return
    for names in groups:
        SharedInputGroup(names, [model.get_submodule(n) for n in names])
        logger.info(f"sparse inference: {' + '.join(names)} multiplied as one CSR matrix (shared input)")


def shared_input_groups(model: nn.Module, example_inputs: Mapping[str, Any], names: Collection[str]) -> list[list[str]]:
    """Groups (two or more) of the CSRLinears in `names` that read the very same input tensor in one forward of
    `example_inputs`, each called once: found by running the model, not from module names, so a cross-attention
    (query on the decoder's states, key and value on the encoder's) groups only its key and value."""
    inputs: dict[str, list[Tensor]] = {name: [] for name in names}  # the tensors themselves: ids stay unique

    def record(name: str) -> Callable[[nn.Module, tuple], None]:
        return lambda module, args: inputs[name].append(args[0] if args else None)

    hooks = [model.get_submodule(name).register_forward_pre_hook(record(name)) for name in names]
    try:
        with torch.no_grad():
            model(**example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    by_input: dict[int, list[str]] = {}
    for name, seen in inputs.items():
        if len(seen) == 1 and seen[0] is not None:
            by_input.setdefault(id(seen[0]), []).append(name)
    return [group for group in by_input.values() if len(group) > 1]


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
