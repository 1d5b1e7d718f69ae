"""What each sparse flag *is* for the runs layer, declared once, beside the field (`declare(field(...), ...)`).

- `key`: which keys the flag is part of. "run": the run key and ledger key (every sparse flag by default), not
  the dense-cache key; "dense": both (it changes what the dense fine-tune learns or selects); "never": no key
  (where or how results are written, how a computation is organised without changing its result).
- `omit_at_default`: the flag is left out of every fingerprint while at its default. Flags added after ledgers
  and caches existed carry it, so the keys written before them stay byte-identical.
- `dense_reset`: the dense stage of a run (the cached dense fine-tune) sets the flag back to its default.
- `lora`: a LoRA setting, refused without `--peft lora` and reset to its default for full fine-tuning.
- `section`: where the flag sits in a fingerprint, "training" (the default) or "data". The task-model settings
  (`--gts_hidden_size`, `--protein_head_learning_rate`, ...) were data flags when the first keys were written and
  are keyed as such (always present, in the dense-cache key too) wherever their dataclass now lives.
- `key_name`: the name the flag has in fingerprints and variant rows when it differs from the field's: a renamed
  flag (`--rigl_init_method`, once `--init_method`) keeps its keys and row ids under its former name.

The role lives in a table keyed by the `Field` object rather than in `field.metadata`, because
`HfArgumentParser` hands every metadata entry to `argparse.add_argument`; `dataclasses.fields()` returns those
same objects, so the role is found from the field wherever it is inherited. `tests/training/test_roles.py`
fails when a flag of `SparseTrainingArguments` has no declared role.
"""

from __future__ import annotations

import dataclasses
from dataclasses import Field, dataclass
from typing import Any

from smc_trainer.errors import UsageError

KEYS = ("run", "dense", "never")
SECTIONS = ("training", "data")


@dataclass(frozen=True)
class Role:
    """How the runs layer treats one flag (see the module docstring)."""

    key: str = "run"
    omit_at_default: bool = False
    dense_reset: bool = False
    lora: bool = False
    section: str = "training"
    key_name: str | None = None


_ROLES: dict[int, tuple[Field, Role]] = {}


def declare(spec: Field, *, key: str = "run", omit_at_default: bool = False, dense_reset: bool = False,
            lora: bool = False, section: str = "training", key_name: str | None = None) -> Field:
    """Attach a `Role` to a dataclass field as it is declared; returns the field."""
    if key not in KEYS:
        raise UsageError(f"key must be one of {', '.join(KEYS)}; got {key!r}")
    if section not in SECTIONS:
        raise UsageError(f"section must be one of {', '.join(SECTIONS)}; got {section!r}")
    _ROLES[id(spec)] = (spec, Role(key, omit_at_default, dense_reset, lora, section, key_name))
    return spec


def role_of(spec: Field) -> Role | None:
    """The role declared for `spec`, None if it has none."""
    entry = _ROLES.get(id(spec))
    return entry[1] if entry is not None and entry[0] is spec else None


def default_of(spec: Field) -> Any:
    if spec.default is not dataclasses.MISSING:
        return spec.default
    return None if spec.default_factory is dataclasses.MISSING else spec.default_factory()


def declared(cls: type) -> dict[str, Role]:
    """Every field of dataclass `cls` that declares a role, by name, in field order."""
    return {f.name: role for f in dataclasses.fields(cls) if (role := role_of(f)) is not None}


def names_where(cls: type, **conditions: Any) -> tuple[str, ...]:
    """The fields of `cls` whose role matches every `attribute=value` of `conditions`."""
    return tuple(name for name, role in declared(cls).items()
                 if all(getattr(role, attr) == value for attr, value in conditions.items()))


def defaults_where(cls: type, **conditions: Any) -> dict[str, Any]:
    """`names_where` with each field's default."""
    chosen = set(names_where(cls, **conditions))
    return {f.name: default_of(f) for f in dataclasses.fields(cls) if f.name in chosen}


def key_names(cls: type) -> dict[str, str]:
    """Field -> the name keys use for it, for the fields of `cls` whose `key_name` differs from their own."""
    return {name: role.key_name for name, role in declared(cls).items()
            if role.key_name is not None and role.key_name != name}
