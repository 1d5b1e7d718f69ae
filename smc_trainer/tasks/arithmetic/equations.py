"""Prefix equations over a problem's numbers: parsing and exact evaluation that never raises.

An equation is a list of tokens in prefix (Polish) notation, as in the SVAMP authors' CSVs:
operators `+ - * / ^`, number placeholders `number0`, `number1`, ... (the problem's numbers, in
order) and constants such as `1.0`, `100.0` or `3.14`. `evaluate_prefix` returns None for every
invalid equation (bad arity, unknown token, a placeholder the problem lacks, division by zero,
overflow, a complex power, a non-finite result): an invalid prediction is simply wrong.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence

from smc_trainer.errors import UsageError

OPERATORS: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "^": operator.pow,
}
NUMBER_TOKEN = re.compile(r"number(\d+)")
CONSTANT_TOKEN = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
ANSWER_TOLERANCE = 1e-4
"""A predicted value is correct when |value - reference| < 1e-4 (the SVAMP / SMC-Bench code's test)."""


def tokenize(equation: str) -> list[str]:
    """The tokens of a space-separated prefix equation."""
    return equation.split()


def number_index(token: str) -> int | None:
    """K for the placeholder `numberK`, else None."""
    match = NUMBER_TOKEN.fullmatch(token)
    return int(match.group(1)) if match else None


def constant_value(token: str) -> float | None:
    """The value of a numeric constant token (`100.0`, `0.01`, `3.14`), else None (also for nan/inf)."""
    return float(token) if CONSTANT_TOKEN.fullmatch(token) else None


def canonical_constant(token: str) -> str:
    """One spelling per constant value (`1`, `1.0` and `1.00` are all `1.0`), so vocabularies do not split."""
    value = constant_value(token)
    if value is None:
        raise UsageError(f"{token!r} is not a numeric constant")
    return repr(value)


def parse_numbers(text: str) -> list[float]:
    """The `Numbers` column: space-separated values of number0, number1, ..."""
    return [float(x) for x in text.split()]


def _leaf(token: str, numbers: Sequence[float]) -> float | None:
    k = number_index(token)
    if k is not None:
        return float(numbers[k]) if k < len(numbers) else None
    return constant_value(token)


def _apply(op: str, left: float, right: float) -> float | None:
    try:
        value = OPERATORS[op](left, right)
    except (ZeroDivisionError, OverflowError):
        return None
    if isinstance(value, complex) or not math.isfinite(value):  # (-8) ** 0.5 is complex in Python
        return None
    return float(value)


def evaluate_prefix(tokens: Sequence[str], numbers: Sequence[float]) -> float | None:
    """The value of a prefix equation over `numbers`, or None if the equation is invalid."""
    stack: list[float] = []
    for token in reversed(tokens):
        if token in OPERATORS:
            if len(stack) < 2:
                return None
            left = stack.pop()
            value = _apply(token, left, stack.pop())
        else:
            value = _leaf(token, numbers)
        if value is None:
            return None
        stack.append(value)
    return stack[0] if len(stack) == 1 else None


def is_correct(value: float | None, reference: float) -> bool:
    """Whether a predicted equation's value matches the reference answer (invalid equations never do)."""
    return value is not None and math.isfinite(reference) and abs(value - reference) < ANSWER_TOLERANCE

