"""A method's or criterion's own hyper-parameters: a small typed dataclass, as peft's `LoraConfig` is for a tuner.

Each field is one knob: its default, its help text and (for a closed set) its choices in `metadata`, and the
roles the runs layer reads (`key`: "run" | "dense" | "never"; `omit_at_default`; `dense_reset`; `variant`: a
report-row label template such as "{label}, window {value}/halving", with `variant_order`, its place in row ids).
On the command line a field is the flag `prefix + name` (`GmpConfig.start` is `--gmp_start`) unless its metadata
names another (`"flag": "prune_frequency"`). Python users build the config directly (`GmpConfig(start=0.1,
end=0.8)`); the CLI builds it from the flags (`from_flags`). `validate()` names the bad value and the valid ones,
in the words of whoever built it: the parameter (`start`) for a config built in Python, the flag (`--gmp_start`)
for one built from flags.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from smc_trainer.errors import UsageError

# metadata keys that argparse understands; the rest are ours and never reach HfArgumentParser
PARSER_METADATA = ("help", "choices", "aliases")


@dataclass
class HyperParameters:
    """Base of every per-method and per-criterion config (subclasses are dataclasses with defaulted fields)."""

    prefix: ClassVar[str] = ""
    """Prepended to each field's name to make its flag (`gmp_` + `start` = `--gmp_start`)."""
    former_prefix: ClassVar[str | None] = None
    """The prefix the flags had before `prefix` was given them (None: never renamed). Each former flag stays a
    deprecated alias (`--init_method` for `--rigl_init_method`), and keys and report rows keep its name."""
    title: ClassVar[str] = ""
    """The flags' group title in `--help` ("GMP (gradual magnitude pruning)"); empty: the class name's stem."""

    @classmethod
    def fields(cls) -> tuple[dataclasses.Field, ...]:
        return dataclasses.fields(cls)

    @classmethod
    def flag_of(cls, name: str) -> str:
        """The command-line name of field `name` (without the dashes)."""
        spec = cls.__dataclass_fields__[name]
        return spec.metadata.get("flag", cls.prefix + name)

    @classmethod
    def former_flag_of(cls, name: str) -> str | None:
        """The flag field `name` had before the config's flags were renamed (None: the flag was never renamed)."""
        if cls.former_prefix is None or "flag" in cls.__dataclass_fields__[name].metadata:
            return None
        return cls.former_prefix + name

    @classmethod
    def flags(cls) -> dict[str, str]:
        """Field name -> flag name, in field order."""
        return {f.name: cls.flag_of(f.name) for f in cls.fields()}

    @classmethod
    def types(cls) -> dict[str, Any]:
        """Field name -> resolved type (string annotations evaluated in the config's module)."""
        return typing.get_type_hints(cls)

    @classmethod
    def from_flags(cls, source: Any) -> HyperParameters:
        """The config whose values are `source`'s flags (an arguments object or a mapping); errors then name flags."""
        get = source.get if isinstance(source, dict) else lambda flag, default: getattr(source, flag, default)
        values = {f.name: get(cls.flag_of(f.name), _default(f)) for f in cls.fields()}
        config = cls(**values)
        object.__setattr__(config, "_named_by_flags", True)
        return config

    def to_flags(self) -> dict[str, Any]:
        """Flag name -> value: what `SparseTrainingArguments(**config.to_flags())` sets."""
        return {self.flag_of(f.name): getattr(self, f.name) for f in self.fields()}

    def param(self, name: str) -> str:
        """How an error names field `name`: `--flag` when the config came from flags, else the field's name."""
        return f"--{self.flag_of(name)}" if getattr(self, "_named_by_flags", False) else name

    def require(self, condition: bool, message: str) -> None:
        if not condition:
            raise UsageError(message)

    def validate(self) -> None:
        """Refuse bad values before any work starts (UsageError naming the value and the valid ones). The base
        checks every field's declared `choices`; subclasses add their own checks and call it."""
        for f in self.fields():
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices is not None and value not in choices:
                raise UsageError(f"{self.param(f.name)} must be one of {', '.join(map(str, choices))}; got {value!r}")


@dataclass
class NoHyperParameters(HyperParameters):
    """The config of a method or criterion without hyper-parameters of its own."""


def checked_config(owner: type, config: HyperParameters | None) -> HyperParameters:
    """`config` if it is `owner.config_class`'s (None: the defaults), else a TypeError that says what to pass."""
    expected = owner.config_class
    if config is None:
        return expected()
    if type(config) is not expected:
        raise TypeError(f"{owner.__name__} takes a {expected.__name__} as its config, not a {type(config).__name__}; "
                        f"from training arguments build it with {owner.__name__}.from_args(args)")
    return config


def _default(spec: dataclasses.Field) -> Any:
    if spec.default is not dataclasses.MISSING:
        return spec.default
    return None if spec.default_factory is dataclasses.MISSING else spec.default_factory()


def default_of(spec: dataclasses.Field) -> Any:
    """A field's default value (its factory called)."""
    return _default(spec)
