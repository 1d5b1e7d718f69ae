"""The output vocabulary of the tree decoder: operators, then constants, then the problem's number slots.

The order is GTS's (Xie & Sun 2019): the operator scores come first, then one score per candidate
leaf (the constants, then number0, number1, ...). Operators and constants are collected from the
training equations only, in a fixed order (operators as in `OPERATORS`, constants by value), so
the same training set always gives the same ids whatever its row order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from smc_trainer.errors import UsageError
from smc_trainer.tasks.arithmetic.equations import OPERATORS, canonical_constant, constant_value, number_index


@dataclass(frozen=True)
class EquationVocab:
    """Token <-> id mapping of prefix equations for a decoder with `max_numbers` number slots."""

    operators: tuple[str, ...]
    constants: tuple[str, ...]
    max_numbers: int

    def __post_init__(self) -> None:
        unknown = [op for op in self.operators if op not in OPERATORS]
        if unknown or not self.operators:
            raise UsageError(f"operators must be a non-empty subset of {' '.join(OPERATORS)}; got {self.operators}")
        if self.max_numbers < 1:
            raise UsageError(f"max_numbers must be >= 1; got {self.max_numbers}")

    @classmethod
    def from_equations(cls, equations: Iterable[Sequence[str]], max_numbers: int) -> EquationVocab:
        """The vocabulary of the operators and constants used by `equations` (tokenized prefix equations)."""
        operators: set[str] = set()
        constants: set[str] = set()
        for tokens in equations:
            for token in tokens:
                if token in OPERATORS:
                    operators.add(token)
                elif number_index(token) is None:
                    constants.add(canonical_constant(token))  # raises on a token that is no number at all
        ordered_ops = tuple(op for op in OPERATORS if op in operators)
        return cls(ordered_ops, tuple(sorted(constants, key=float)), max_numbers)

    @property
    def number_start(self) -> int:
        """Id of `number0`; ids below it are operators and constants."""
        return len(self.operators) + len(self.constants)

    @property
    def size(self) -> int:
        return self.number_start + self.max_numbers

    def is_operator(self, token_id: int) -> bool:
        return 0 <= token_id < len(self.operators)

    def token_id(self, token: str) -> int | None:
        """The id of one token, or None if this vocabulary cannot produce it."""
        if token in OPERATORS:
            return self.operators.index(token) if token in self.operators else None
        k = number_index(token)
        if k is not None:
            return self.number_start + k if k < self.max_numbers else None
        if constant_value(token) is None:
            return None
        constant = canonical_constant(token)
        return len(self.operators) + self.constants.index(constant) if constant in self.constants else None

    def encode(self, tokens: Sequence[str]) -> list[int] | None:
        """Ids of an equation, or None when a token is out of vocabulary (e.g. a constant never seen in training)."""
        ids = [self.token_id(t) for t in tokens]
        return None if any(i is None for i in ids) else ids  # type: ignore[return-value]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of an id sequence; negative ids (padding) are skipped."""
        tokens = []
        for i in ids:
            i = int(i)
            if i < 0:
                continue
            if i >= self.size:
                raise UsageError(f"token id {i} is outside the vocabulary of size {self.size}")
            if i < len(self.operators):
                tokens.append(self.operators[i])
            elif i < self.number_start:
                tokens.append(self.constants[i - len(self.operators)])
            else:
                tokens.append(f"number{i - self.number_start}")
        return tokens
