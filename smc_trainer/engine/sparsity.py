"""`SparsityConfig`: what every method and criterion shares, beside its own config.

How far to prune (`sparsity`), how the budget spreads over layers (`distribution`, with OWL's two knobs), which
pattern the masks keep (`pattern`: unstructured or N:M), which weights are prunable (`prune_embeddings`,
`prune_heads`, the `include` / `exclude` regexes, the `modules` group) and the seed of every random draw. A method
or criterion receives this and its own config, never the whole training arguments, so the engine runs without the
CLI: `GMP(GmpConfig(start=0.1), sparsity=SparsityConfig(sparsity=0.9))`.

The fields mirror flags the argument layer declares (`--sparsity`, `--distribution`, `--sparsity_pattern`,
`--prune_include`, `--seed`, ...); `SparsityConfig.from_flags(args)` reads them, and its errors then name the flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from smc_trainer.engine.distributions import DISTRIBUTIONS
from smc_trainer.engine.hyperparameters import HyperParameters
from smc_trainer.engine.patterns import NMPattern, parse_pattern
from smc_trainer.engine.targets import PruneTarget, find_targets


@dataclass
class SparsityConfig(HyperParameters):
    """The target sparsity, its spread over layers, the pattern, the prunable set and the seed."""

    sparsity: float = 0.0
    """Fraction of the prunable weights set to zero, in [0, 1)."""
    distribution: str = field(default="global", metadata={"choices": DISTRIBUTIONS})
    """global (one threshold), uniform, erk or owl (`smc_trainer.engine.distributions`)."""
    pattern: str = field(default="unstructured", metadata={"flag": "sparsity_pattern"})
    """unstructured, or N:M (N kept of every M consecutive weights along the input dimension)."""
    owl_threshold: float = 5.0
    """OWL's M: a Wanda score above M x its layer's mean is an outlier."""
    owl_lambda: float = 0.08
    """OWL's lambda: layer densities span the target +- lambda."""
    prune_embeddings: bool = True
    prune_heads: bool = True
    include: str | None = field(default=None, metadata={"flag": "prune_include"})
    """Regex: only parameters whose name matches are prunable."""
    exclude: str | None = field(default=None, metadata={"flag": "prune_exclude"})
    """Regex: parameters whose name matches are never pruned."""
    modules: str | None = field(default=None, metadata={"flag": "prune_modules"})
    """Only these linears of the transformer layers (q, k, v, o, ffn: e.g. qkvo_ffn)."""
    seed: int = 42

    @property
    def nm(self) -> NMPattern | None:
        """The N:M pattern, or None when unstructured."""
        return parse_pattern(self.pattern)

    @property
    def density(self) -> float:
        return 1.0 - self.sparsity

    def targets(self, model: nn.Module) -> list[PruneTarget]:
        """The prunable weights of `model` (adapters seen through)."""
        return find_targets(model, prune_embeddings=self.prune_embeddings, prune_heads=self.prune_heads,
                            include=self.include, exclude=self.exclude, modules=self.modules)

    def validate(self) -> None:
        super().validate()
        self.require(0.0 <= self.sparsity < 1.0, f"{self.param('sparsity')} must be in [0, 1); got {self.sparsity!r}")
        parse_pattern(self.pattern)  # refuses a malformed pattern
        self.require(self.owl_threshold > 0 and self.owl_lambda >= 0,
                     f"{self.param('owl_threshold')} must be > 0 and {self.param('owl_lambda')} >= 0; got "
                     f"{self.owl_threshold}, {self.owl_lambda}")
