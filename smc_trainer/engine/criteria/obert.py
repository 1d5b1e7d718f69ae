"""`obert`: the Optimal BERT Surgeon (Kurtic et al. 2022), second-order scores from an empirical Fisher.

Each prunable weight is cut into blocks of `--obert_block_size` B consecutive values (per layer, the
last block padded). Per block the inverse of the dampened empirical Fisher

    F = lambda I + (1/m) sum_i g_i g_i^T          (m = `--obert_num_grads` batch gradients)

is built directly by m Sherman-Morrison (Woodbury rank-1) updates from F^-1 = I / lambda, so no
matrix is ever inverted. The score of weight q is the OBS saliency w_q^2 / (2 [F^-1]_qq). With
`--obert_update`, after the masks are chosen the kept weights of every block absorb the removal of
its pruned set Q by the OBS update  dw = -F^-1 E_Q^T (F^-1_QQ)^-1 w_Q  (exact for all of Q at once).

Memory: N x B values of `--obert_dtype` for N prunable weights (block size 1 is a diagonal Fisher,
N values: the official SMC-Bench setting, with no update). Computation works on chunks of blocks
in float32 (or float64), so only the stored inverse grows with B.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from smc_trainer.engine.criteria.base import Criterion, ScoringView, register_criterion
from smc_trainer.engine.hyperparameters import HyperParameters
from smc_trainer.engine.selection import LayerScores, tensor_scores
from smc_trainer.errors import UsageError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
CHUNK_BLOCKS = 8192  # blocks per computation chunk: bounds the float32 working copy to 8192 x B x B values


class BlockFisherInverse:
    """F^-1 of one flat weight vector of `numel` values, as (n_blocks, B, B) blocks, built by rank-1 updates."""

    def __init__(self, numel: int, block: int, dampening: float, num_grads: int, dtype: torch.dtype,
                 device: torch.device):
        self.numel, self.block, self.num_grads = numel, block, num_grads
        self.n_blocks = -(-numel // block)
        self.compute_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        eye = torch.eye(block, dtype=dtype, device=device) / dampening
        self.finv = eye.expand(self.n_blocks, block, block).clone()

    def blocks_of(self, flat: Tensor, fill: float = 0.0) -> Tensor:
        """A flat vector of `numel` values as (n_blocks, B), padded with `fill`."""
        pad = self.n_blocks * self.block - self.numel
        flat = flat.reshape(-1).to(self.compute_dtype)
        if pad:
            flat = torch.cat([flat, flat.new_full((pad,), fill)])
        return flat.view(self.n_blocks, self.block)

    @torch.no_grad()
    def add_gradient(self, grad: Tensor) -> None:
        """F^-1 <- F^-1 - (F^-1 g)(F^-1 g)^T / (m + g^T F^-1 g), block by block (F^-1 is symmetric)."""
        g = self.blocks_of(grad)
        for start in range(0, self.n_blocks, CHUNK_BLOCKS):
            part = slice(start, start + CHUNK_BLOCKS)
            f = self.finv[part].to(self.compute_dtype)
            gb = g[part]
            fg = torch.bmm(f, gb.unsqueeze(2)).squeeze(2)
            denom = self.num_grads + (gb * fg).sum(1)
            f.sub_(fg.unsqueeze(2) * fg.unsqueeze(1) / denom.view(-1, 1, 1))
            self.finv[part] = f.to(self.finv.dtype)

    def diagonal(self) -> Tensor:
        """[F^-1]_qq for every weight, flat (padding dropped)."""
        return self.finv.diagonal(dim1=1, dim2=2).reshape(-1)[: self.numel].to(self.compute_dtype)

    @torch.no_grad()
    def obs_delta(self, weight: Tensor, keep: Tensor) -> Tensor:
        """The OBS update of `weight` (flat) that removes every position `keep` leaves out, block by block."""
        w = self.blocks_of(weight)
        pruned = ~self.blocks_of(keep.float(), fill=1.0).bool()
        delta = torch.zeros_like(w)
        touched = pruned.any(1).nonzero().squeeze(1)
        eye = torch.eye(self.block, dtype=self.compute_dtype, device=w.device)
        for start in range(0, touched.numel(), CHUNK_BLOCKS):
            idx = touched[start : start + CHUNK_BLOCKS]
            f, q, wb = self.finv[idx].to(self.compute_dtype), pruned[idx].to(self.compute_dtype), w[idx]
            # M = P F^-1 P + (I - P): solving M x = P w gives x_Q = (F^-1_QQ)^-1 w_Q and x = 0 elsewhere
            system = f * q.unsqueeze(2) * q.unsqueeze(1) + eye * (1.0 - q).unsqueeze(2)
            x = torch.linalg.solve(system, (q * wb).unsqueeze(2))
            delta[idx] = -torch.bmm(f, x).squeeze(2)
        return delta.reshape(-1)[: self.numel]


@dataclass
class ObertConfig(HyperParameters):
    """The optimal-BERT-surgeon (oBERT) settings: the block Fisher, its gradients, the OBS update, its storage."""

    prefix = "obert_"

    block_size: int = field(default=50, metadata={
        "omit_at_default": True,
        "help": "oBERT: consecutive weights per Fisher block B (oBERT paper: 50; SMC-Bench's official run: 1, a "
                "diagonal Fisher). The inverse Fisher takes N x B values for N prunable weights."})
    dampening: float = field(default=1e-7, metadata={
        "omit_at_default": True, "help": "oBERT: dampening lambda of F = lambda I + mean g g^T (paper: 1e-7)."})
    num_grads: int = field(default=64, metadata={
        "omit_at_default": True,
        "help": "oBERT: training-batch gradients per Fisher (oBERT paper: 1024); 0 = one full pass over the training "
                "data (SMC-Bench's official run)."})
    update: bool = field(default=True, metadata={
        "omit_at_default": True,
        "help": "oBERT: after each pruning step, update the kept weights of every block by the OBS formula (the oBERT "
                "paper; SMC-Bench's official run did not). No effect with block size 1."})
    dtype: str = field(default="float32", metadata={
        "omit_at_default": True, "choices": tuple(DTYPES),
        "help": "oBERT: dtype the inverse Fisher is stored in: float32, bfloat16 or float16 (half the memory), "
                "float64 (tests)."})

    def validate(self) -> None:
        super().validate()
        self.require(self.block_size >= 1, f"{self.param('block_size')} must be >= 1; got {self.block_size}")
        self.require(self.dampening > 0.0, f"{self.param('dampening')} must be > 0; got {self.dampening}")
        self.require(self.num_grads >= 0, f"{self.param('num_grads')} must be >= 1, or 0 for one full pass; "
                     f"got {self.num_grads}")


@register_criterion("obert", config=ObertConfig)
class OBERT(Criterion):
    needs = "gradients"
    order = 5
    config: ObertConfig

    def __init__(self, config: ObertConfig | None = None, sparsity=None):
        super().__init__(config, sparsity)
        self._inverses: dict[str, BlockFisherInverse] | None = None

    @classmethod
    def validate_args(cls, args) -> None:
        if getattr(args, "fp16", False):
            raise UsageError("--criterion obert builds a Fisher from gradients, which --fp16 scales by a changing "
                             "loss scale; use --bf16 or fp32")

    def fisher_inverses(self, view: ScoringView) -> dict[str, BlockFisherInverse]:
        """Block Fisher inverses of every prunable weight from `--obert_num_grads` batch gradients."""
        c = self.config
        m = c.num_grads or view.batches_per_pass
        if m < 1:
            raise UsageError("--obert_num_grads 0 asks for one full pass, but the training data has no batches")
        inverses = {t.name: BlockFisherInverse(t.numel, c.block_size, c.dampening, m, DTYPES[c.dtype],
                                               t.param.device) for t in view.targets}
        seen = 0
        for _ in view.gradient_batches(m):
            for t in view.targets:
                if t.param.grad is not None:
                    if not bool(torch.isfinite(t.param.grad).all()):
                        raise FloatingPointError(f"oBERT gradients of {t.name} are not finite")
                    inverses[t.name].add_gradient(t.param.grad)
            seen += 1
        if seen != m:
            raise UsageError(f"--obert_num_grads {m} exceeds the {seen} training batches available")
        return inverses

    def scores(self, view: ScoringView) -> dict[str, LayerScores]:
        self._inverses = self.fisher_inverses(view)
        out = {}
        for t in view.targets:
            w = t.param.detach().reshape(-1).to(self._inverses[t.name].compute_dtype)
            saliency = (w * w / (2.0 * self._inverses[t.name].diagonal())).float()
            out[t.name] = tensor_scores(saliency, within=view.mask_of(t.name))
        return out

    @torch.no_grad()
    def after_selection(self, view: ScoringView, masks: Mapping[str, Tensor]) -> None:
        inverses, self._inverses = self._inverses, None
        if not self.config.update or inverses is None or self.config.block_size == 1:
            return  # a block of one has no other weight to update
        for t in view.targets:
            delta = inverses[t.name].obs_delta(t.param.detach().reshape(-1), masks[t.name].reshape(-1))
            t.param.add_(delta.view_as(t.param).to(t.param.dtype))
