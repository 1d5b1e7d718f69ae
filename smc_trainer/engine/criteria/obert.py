"""`obert`: the Optimal BERT Surgeon (Kurtic et al. 2022), second-order scores from an empirical Fisher.

Each prunable weight is cut into blocks of `--obert_block_size` B consecutive values (per layer, the
last block padded). Per block the dampened empirical Fisher

    F = lambda I + (1/m) sum_i g_i g_i^T          (m = `--obert_num_grads` batch gradients)

is accumulated from gradients buffered k at a time and inverted once (`obert_fisher.BlockFisherInverse`). The
score of weight q is the OBS saliency w_q^2 / (2 [F^-1]_qq). With `--obert_update`, after the masks are chosen
the kept weights of every block absorb the removal of its pruned set Q by the OBS update
dw = -F^-1 E_Q^T (F^-1_QQ)^-1 w_Q  (exact for all of Q at once).

Memory: N x B values of `--obert_dtype` for N prunable weights, plus the gradient buffer
(`--obert_buffer_gb`). Block size 1 is a diagonal Fisher, N values: the official SMC-Bench setting, with no
update. `--obert_layerwise` holds one layer's inverse at a time and pays with recomputed gradients.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import groupby

import torch
from torch import Tensor

from smc_trainer.engine.criteria.base import Criterion, ScoringView, register_criterion
from smc_trainer.engine.criteria.obert_fisher import BlockFisherInverse, buffer_grads
from smc_trainer.engine.hyperparameters import HyperParameters
from smc_trainer.engine.selection import LayerScores, tensor_scores
from smc_trainer.engine.targets import PruneTarget
from smc_trainer.errors import UsageError

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


@dataclass
class ObertConfig(HyperParameters):
    """The optimal-BERT-surgeon (oBERT) settings: the block Fisher, its gradients, the OBS update, its storage."""

    title = "oBERT criterion (--criterion obert)"

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
    buffer_gb: float = field(default=1.0, metadata={
        "omit_at_default": True,
        "help": "oBERT: memory for buffered gradients, in GB: k gradients of all weights scored at once (of one "
                "layer with --obert_layerwise) are added to the Fisher in one batched product, k as many as fit "
                "(at least 1). Larger k: fewer passes over the stored Fisher; the result is the same."})
    layerwise: bool = field(default=False, metadata={
        "omit_at_default": True,
        "help": "oBERT: build one layer's inverse Fisher at a time (embeddings, each transformer layer, head), so "
                "memory holds one layer's N x B values instead of the model's. Costs --obert_num_grads "
                "forward+backward passes per layer for the scores and as many again for --obert_update; the "
                "result is the same when the gradient batches repeat (the trainer's do)."})

    def validate(self) -> None:
        super().validate()
        self.require(self.block_size >= 1, f"{self.param('block_size')} must be >= 1; got {self.block_size}")
        self.require(self.dampening > 0.0, f"{self.param('dampening')} must be > 0; got {self.dampening}")
        self.require(self.buffer_gb > 0.0, f"{self.param('buffer_gb')} must be > 0; got {self.buffer_gb}")
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
        self._diagonals: dict[str, Tensor] | None = None  # --obert_layerwise: to check the rebuilt inverses

    @classmethod
    def validate_args(cls, args) -> None:
        if getattr(args, "fp16", False):
            raise UsageError("--criterion obert builds a Fisher from gradients, which --fp16 scales by a changing "
                             "loss scale; use --bf16 or fp32")

    def _num_grads(self, view: ScoringView) -> int:
        m = self.config.num_grads or view.batches_per_pass
        if m < 1:
            raise UsageError("--obert_num_grads 0 asks for one full pass, but the training data has no batches")
        return m

    def fisher_inverses(self, view: ScoringView, targets: list[PruneTarget] | None = None
                        ) -> dict[str, BlockFisherInverse]:
        """Block Fisher inverses of `targets` (default: every prunable weight) from `--obert_num_grads` batch
        gradients, buffered so that the buffer of all of them together fits `--obert_buffer_gb`."""
        c, m = self.config, self._num_grads(view)
        targets = view.targets if targets is None else targets
        dtype = DTYPES[c.dtype]
        itemsize = 8 if dtype == torch.float64 else 4
        k = buffer_grads(c.buffer_gb * 1e9, sum(-(-t.numel // c.block_size) * c.block_size for t in targets), m,
                         itemsize)
        inverses = {t.name: BlockFisherInverse(t.numel, c.block_size, c.dampening, m, dtype, t.param.device, k)
                    for t in targets}
        seen = 0
        for _ in view.gradient_batches(m):
            for t in targets:
                if t.param.grad is not None:
                    if not bool(torch.isfinite(t.param.grad).all()):
                        raise FloatingPointError(f"oBERT gradients of {t.name} are not finite")
                    inverses[t.name].add_gradient(t.param.grad)
            seen += 1
        if seen != m:
            raise UsageError(f"--obert_num_grads {m} exceeds the {seen} training batches available")
        for inv in inverses.values():
            inv.finish()
        return inverses

    def _layer_groups(self, view: ScoringView) -> list[list[PruneTarget]]:
        """The targets in groups of one layer each (`--obert_layerwise`), or all at once."""
        if not self.config.layerwise:
            return [list(view.targets)]
        return [list(g) for _, g in groupby(sorted(view.targets, key=lambda t: t.group), key=lambda t: t.group)]

    def _updates(self) -> bool:
        return self.config.update and self.config.block_size > 1  # a block of one has no other weight to update

    def scores(self, view: ScoringView) -> dict[str, LayerScores]:
        out, self._inverses, self._diagonals = {}, {}, {}
        for group in self._layer_groups(view):
            inverses = self.fisher_inverses(view, group)
            for t in group:
                diag = inverses[t.name].diagonal()
                w = t.param.detach().reshape(-1).to(diag.dtype)
                out[t.name] = tensor_scores((w * w / (2.0 * diag)).float(), within=view.mask_of(t.name))
                if self.config.layerwise and self._updates():
                    self._diagonals[t.name] = diag.float()
            if not self.config.layerwise and self._updates():
                self._inverses = inverses
        return out

    @torch.no_grad()
    def after_selection(self, view: ScoringView, masks: Mapping[str, Tensor]) -> None:
        inverses, self._inverses = self._inverses, None
        diagonals, self._diagonals = self._diagonals, None
        if not self._updates() or inverses is None:
            return
        if not self.config.layerwise:
            for t in view.targets:
                delta = inverses[t.name].obs_delta(t.param.detach().reshape(-1), masks[t.name].reshape(-1))
                t.param.add_(delta.view_as(t.param).to(t.param.dtype))
            return
        deltas = {}  # applied once every layer's is computed, so each rebuilt inverse sees the scored weights
        for group in self._layer_groups(view):
            inverses = self.fisher_inverses(view, group)
            for t in group:
                self._check_rebuilt(t.name, inverses[t.name].diagonal(), diagonals)
                delta = inverses[t.name].obs_delta(t.param.detach().reshape(-1), masks[t.name].reshape(-1))
                deltas[t.name] = delta.view_as(t.param).to(t.param.dtype)
            del inverses
        for t in view.targets:
            t.param.add_(deltas[t.name])

    @staticmethod
    def _check_rebuilt(name: str, diag: Tensor, scored: Mapping[str, Tensor] | None) -> None:
        if scored is not None and name in scored and not torch.allclose(diag.float(), scored[name], rtol=1e-3):
            logger.warning(f"oBERT --obert_layerwise: the inverse Fisher of {name} rebuilt for the OBS update "
                           "differs from the scored one; the gradient batches did not repeat")
