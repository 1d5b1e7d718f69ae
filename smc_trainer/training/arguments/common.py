"""What the argument mixins share: the error that names a flag, its bad value and the valid choices."""

from __future__ import annotations


def _choices_error(flag: str, value: object, choices: tuple[str, ...] | list[str]) -> ValueError:
    return ValueError(f"--{flag} must be one of {', '.join(choices)}; got {value!r}")
