"""Method variants: the flags besides `--sparse_method` that make a different report row.

SMC-Bench reports OMP+RigL, SNIP+RigL and Random+RigL as three rows of one method. A *variant axis* is a
training flag that tells such rows apart; each is declared once (the flag, the methods it applies to, how a
value reads in the paper's words, its place in row ids) and sweeps, ledger records, run keys and reports all
go through it. A method's or criterion's own knob declares its axis in its config (`config_axes`, plugins'
too); the axes that belong to no one method are `VARIANT_AXES`. An axis whose flag the training arguments do
not have is skipped everywhere. An axis's default is the flag's own dataclass default.

A run's *variant* is the dict of its applicable axes whose value differs from the default, and its *row*
is the stable id `method[:key=value]...` (axes in declared order), which is also the `--methods` syntax
of a sweep: `rigl:init_method=snip`. An axis's *key* is its flag's name in keys (`roles.key_names`): the flag
itself, or a renamed flag's former name (`init_method` for `--rigl_init_method`), so rows and variants stored
in ledgers keep their ids; `--methods` accepts the current flag name too (`rigl:rigl_init_method=snip`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from smc_trainer.engine.module_groups import parse_module_group
from smc_trainer.errors import UsageError
from smc_trainer.methods import get_method_class, method_names
from smc_trainer.runs.presets import base_method, is_preset, load_preset, preset_names
from smc_trainer.training.arguments import ARITHMETIC_MODELS, DISTRIBUTIONS
from smc_trainer.training.arguments.plugin_arguments import arguments_class
from smc_trainer.training.arguments.roles import key_names

Variant = dict[str, Any]
_SPEC_PARTS = re.compile(r":(?=[^:=]*=)")  # a ':' that starts `key=`; values may hold ':' (an N:M pattern)

# the paper's legend names (Figures 2-5); methods missing here use their class's `paper_name`, if any
PAPER_NAMES: dict[str, str] = {
    "dense": "dense",
    "omp_after": "OMP (After)",
    "random_after": "Random (After)",
    "lth": "LTH (After)",
    "lrr": "LRR (After)",
    "omp_before": "OMP (Before)",
    "random_before": "Random (Before)",
    "snip": "SNIP (Before)",
    "gmp": "GMP (During)",
    "rigl": "RigL",
    "set": "SET",
    # one-shot activation-aware pruning (not in the SMC-Bench paper; their own papers' names)
    "wanda_before": "Wanda (Before)",
    "wanda_after": "Wanda (After)",
    "sparsegpt_before": "SparseGPT (Before)",
    "sparsegpt_after": "SparseGPT (After)",
}
_ACRONYMS = {"erk": "ERK", "owl": "OWL", "lora": "LoRA", "obert": "oBERT", "snip": "SNIP", "wanda": "Wanda",
             "sparsegpt": "SparseGPT", "gts": "GTS", "graph2tree": "Graph2Tree"}


def paper_name(method: str) -> str:
    """The method's name in the paper's words ("OMP (After)"); `name (Phase)` for a method the paper lacks."""
    if method in PAPER_NAMES:
        return PAPER_NAMES[method]
    if is_preset(method):  # a method preset (recipes/methods/) has its own label
        return load_preset(method).label
    try:
        cls = get_method_class(method)
    except ValueError:
        return method
    return getattr(cls, "paper_name", None) or f"{method} ({cls.phase.title()})"


def short_name(method: str) -> str:
    """The paper name without its phase: "SNIP (Before)" -> "SNIP"."""
    return re.sub(r"\s*\([^)]*\)$", "", paper_name(method))


def format_value(value: Any) -> str:
    """A flag value as written on the command line (bools as true/false)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _word(value: Any) -> str:
    text = format_value(value)
    return _ACRONYMS.get(text.lower(), text)


@dataclass(frozen=True)
class VariantAxis:
    """One flag that makes a different row: where it applies, its valid values, how a value is labelled."""

    flag: str
    """The field of the training arguments the axis sets."""
    label: Callable[[str, str, Any], str]
    """(label so far, method, value) -> label: how the value reads in the paper's words."""
    applies_to: tuple[str, ...] | None = None
    """Methods the flag changes (None: every method but dense); elsewhere the flag is ignored."""
    choices: Callable[[], Sequence[Any]] | None = None
    """The valid values, named in errors; None: checked by `check`, or by the flag's own validation."""
    check: Callable[[Any], Any] | None = None
    """Raises UsageError for a bad value (used when `choices` is None)."""
    label_default: bool = False
    """Label the default value too (RigL's default initial mask is OMP: its row reads "OMP + RigL")."""
    order: float = 1000.0
    """Place in row ids (`method:a=1:b=2` lists axes by order): fixed, so the ids stored in ledgers stay the same."""
    aliases: tuple[str, ...] = ()
    """Other keys `--methods` accepts for the axis (a config knob's own name: `mymethod:alpha=0.1`)."""
    dense: bool = False
    """The axis changes the model itself, so it applies to the dense baseline too: each value has its own dense
    fine-tune (`dense_variant`), which the after and iterative methods of that value start from."""
    panel: bool = False
    """The axis picks the model, as the paper's panels do (Fig. 2: GTS and Graph2Tree side by side): the report gives
    each value its own table, plot, dense line and reference curves, and the rows inside read as plain methods."""

    def applies(self, method: str) -> bool:
        method = base_method(method)  # a preset varies like the method it runs
        if method == "dense":
            return self.dense
        return self.applies_to is None or method in self.applies_to

    @property
    def key(self) -> str:
        """The axis's name in row ids, variants and fingerprints: the flag, or a renamed flag's former name."""
        return _key_names(arguments_class()).get(self.flag, self.flag)

    @property
    def default(self) -> Any:
        spec = _flag_fields()[self.flag]
        if spec.default is not dataclasses.MISSING:
            return spec.default
        return None if spec.default_factory is dataclasses.MISSING else spec.default_factory()


def _criterion_label(label: str, method: str, value: Any) -> str:
    """`omp_after --criterion wanda` reads as its alias does ("Wanda (After)"); other pairs as
    "OMP (After), movement"."""
    phase = {"omp_after": "after", "omp_before": "before"}.get(method)
    alias = f"{format_value(value)}_{phase}" if phase else None
    if alias in PAPER_NAMES and label == paper_name(method):
        return PAPER_NAMES[alias]
    return f"{label}, {_word(value)}"


def _init_label(label: str, method: str, value: Any) -> str:
    return f"{short_name(str(value))} + {label}"


def _teacher_label(label: str, method: str, value: Any) -> str:
    text = format_value(value)
    return f"{label} + KD" if text == "dense" else f"{label} + KD ({os.path.basename(text.rstrip('/')) or text})"


def _rigl_init_methods() -> Sequence[str]:
    from smc_trainer.methods.rigl import INIT_METHODS

    return INIT_METHODS


# The axes that belong to no single method or criterion. A method's or criterion's own knob declares its axis in
# its config (`metadata={"variant": "{label}, window {value}/halving", "variant_order": 100}`; a plugin's knobs
# are axes unless they say `"variant": False`), read by `config_axes`.
VARIANT_AXES: tuple[VariantAxis, ...] = (
    VariantAxis("rigl_init_method", _init_label, applies_to=("rigl", "set"), choices=_rigl_init_methods,
                label_default=True, order=0),
    VariantAxis("prune_modules", lambda label, m, v: f"{label} [{v}]", check=parse_module_group, order=10),
    VariantAxis("criterion", lambda label, m, v: _criterion_label(label, m, v), order=20),
    VariantAxis("distribution", lambda label, m, v: f"{label}, {_word(v)}", choices=lambda: DISTRIBUTIONS,
                order=30),
    VariantAxis("sparsity_pattern", lambda label, m, v: f"{label}, {_word(v)}", order=40),
    VariantAxis("distill_teacher", _teacher_label, order=50),
    VariantAxis("peft", lambda label, m, v: f"{label} + {_word(v)}", order=60),
    VariantAxis("sparse_adapter", lambda label, m, v: f"{label} (adapter not masked, re-masked after merge)"
                if v is False else label, order=70),
    VariantAxis("lr_rewind", lambda label, m, v: f"{label} + LR rewind" if v is True else f"{label}, lr_rewind={v}",
                order=80),
    # 90, 100: GMP*'s knobs (GmpConfig)
    # distillation knobs: a run that changes them (against the method's or preset's own value) is its own row
    VariantAxis("distill_hardness", lambda label, m, v: f"{label}, KD hardness {format_value(v)}", order=110),
    VariantAxis("distill_temperature", lambda label, m, v: f"{label}, KD T {format_value(v)}", order=120),
    # the arithmetic model (GTS or Graph2Tree): it changes the dense baseline too
    VariantAxis("arithmetic_model", lambda label, m, v: f"{label}, {_word(v)}", choices=lambda: ARITHMETIC_MODELS,
                order=130, dense=True, panel=True),
)


def _template_label(template: str) -> Callable[[str, str, Any], str]:
    return lambda label, method, value: template.format(label=label, method=method, value=format_value(value))


def config_axes() -> list[VariantAxis]:
    """The axes declared by the registered methods' and criteria's configs (a method's apply to it alone)."""
    from smc_trainer.engine.criteria import CRITERIA
    from smc_trainer.methods import METHODS
    from smc_trainer.training.arguments.plugin_arguments import plugin_configs

    plugins = {config for _, config in plugin_configs()}
    found = []
    for registry, own in ((METHODS, True), (CRITERIA, False)):
        for entry, config in registry.configs().items():
            for knob in config.fields():
                template = knob.metadata.get("variant", config in plugins)
                if template is False:
                    continue
                flag = config.flag_of(knob.name)
                if template is True:
                    template = f"{{label}}, {flag} {{value}}"
                choices = knob.metadata.get("choices")
                found.append(VariantAxis(
                    flag, _template_label(template), applies_to=(entry,) if own else None,
                    choices=None if choices is None else (lambda c=tuple(choices): c),
                    order=knob.metadata.get("variant_order", 1000.0), aliases=(knob.name,) if own else ()))
    return found


def _flag_fields() -> dict[str, dataclasses.Field]:
    """The fields of the training arguments, with the plugins' flags (loaded so far)."""
    return _fields_of(arguments_class())


@cache
def _fields_of(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


@cache
def _key_names(cls: type) -> dict[str, str]:
    return key_names(cls)


def axes() -> list[VariantAxis]:
    """Every axis whose flag exists, in row-id order (the built-in ones, then those the configs declare)."""
    fields = _flag_fields()
    every = sorted((*VARIANT_AXES, *config_axes()), key=lambda axis: axis.order)
    return [axis for axis in every if axis.flag in fields]


def axis_names() -> list[str]:
    """The axes' keys, in row-id order."""
    return [axis.key for axis in axes()]


def variant_flags(variant: Mapping[str, Any] | Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """A variant (keyed by axis key) as the training flags it sets (`init_method` -> `rigl_init_method`)."""
    flags = {axis.key: axis.flag for axis in axes()}
    return {flags.get(key, key): value for key, value in dict(variant).items()}


# ---- a run's variant and row ------------------------------------------------------------------------


def dense_variant(variant: Mapping[str, Any] | Sequence[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
    """The values of a variant that the dense baseline shares (axes declared `dense=True`), in row-id order: the
    dense fine-tune a run of this variant starts from."""
    values = dict(variant)
    return tuple((axis.key, values[axis.key]) for axis in axes() if axis.dense and axis.key in values)


def variant_of(method: str, values: Mapping[str, Any] | Any) -> Variant:
    """The non-default values of the axes that apply to `method`, by axis key, read from a mapping keyed as
    fingerprints are (a record's training config) or from an arguments object. For a method preset, "default"
    is the preset's own value of the flag."""
    preset_args = load_preset(method).args if is_preset(method) else {}
    variant = {}
    for axis in axes():
        if isinstance(values, Mapping):
            value = values.get(axis.key, axis.default)
        else:
            value = getattr(values, axis.flag, axis.default)
        default = preset_args.get(axis.flag, axis.default)
        if axis.applies(method) and value is not None and value != default:
            variant[axis.key] = value
    return variant


def run_method(args: Any) -> str:
    """The name a run's rows and keys use: its method preset, else its method."""
    return getattr(args, "method_preset", None) or args.sparse_method


def args_variant(args: Any) -> Variant:
    """The variant of a run from its `SparseTrainingArguments` (a preset's run: relative to the preset)."""
    return variant_of(run_method(args), args)


def record_variant(record: Mapping[str, Any]) -> Variant:
    """A ledger record's variant: its `variant` field, or for records written before that field, the module group
    and the axes found in the record's training config (records that ran with every default have none)."""
    if isinstance(record.get("variant"), Mapping):
        return dict(record["variant"])
    training = dict((record.get("config") or {}).get("training") or {})
    if record.get("module_group") is not None:
        training["prune_modules"] = record["module_group"]
    return variant_of(record["method"], training)


def row_id(method: str, variant: Mapping[str, Any]) -> str:
    """The stable row id: `method` plus `:flag=value` per non-default axis, in declared order (`--methods` syntax)."""
    order = {name: i for i, name in enumerate(axis_names())}
    parts = sorted(variant.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
    return method + "".join(f":{flag}={format_value(value)}" for flag, value in parts)


def record_row(record: Mapping[str, Any]) -> str:
    """A ledger record's row id (its `row` field, or derived from its variant for older records)."""
    return record.get("row") or row_id(record["method"], record_variant(record))


def record_panel(record: Mapping[str, Any]) -> str | None:
    """The model panel a record belongs to: its panel axes' non-default values ("graph2tree"), None for the
    recipe's own model."""
    variant = record_variant(record)
    values = [format_value(variant[axis.flag]) for axis in axes() if axis.panel and axis.flag in variant]
    return ", ".join(values) or None


def within_panel(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record as its panel's table reads it: the panel axes dropped from its variant and row, so Graph2Tree's
    `omp_after:arithmetic_model=graph2tree` is the row `omp_after` of the Graph2Tree table (and meets the paper's
    Graph2Tree curve of that method)."""
    panel = {axis.flag for axis in axes() if axis.panel}
    variant = {k: v for k, v in record_variant(record).items() if k not in panel}
    return {**record, "variant": variant, "row": row_id(record["method"], variant)}


def row_method(row: str) -> str:
    """The method of a row id ("rigl:init_method=snip" -> "rigl"; a legacy "omp_after [qk]" -> "omp_after")."""
    return _SPEC_PARTS.split(row, maxsplit=1)[0].split(" [", 1)[0]


def row_label(method: str, variant: Mapping[str, Any]) -> str:
    """The row in the paper's words: "SNIP + RigL", "OMP + RigL" (RigL's default), "OMP (After) [qk]"."""
    label = paper_name(method)
    for axis in axes():
        if not axis.applies(method):
            continue
        value = variant.get(axis.key, axis.default)
        if axis.key in variant or (axis.label_default and value is not None):
            label = axis.label(label, method, value)
    return label


# ---- sweep specs: "rigl:init_method=snip" ------------------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    """One entry of a sweep's `--methods`: a method and its non-default axis values (flag, typed value)."""

    method: str
    variant: tuple[tuple[str, Any], ...] = ()

    @property
    def row(self) -> str:
        return row_id(self.method, dict(self.variant))


def parse_method_spec(text: str) -> MethodSpec:
    """`method[:flag=value]...` -> MethodSpec, validated: the method, each flag (a known axis that applies to the
    method) and each value (the axis's choices, or the flag's type). Values equal to the default are dropped."""
    method, *parts = _SPEC_PARTS.split(text.strip())
    method = method.strip()
    if ":" in method:
        raise UsageError(f"--methods {text!r}: write variants as method:key=value[:key=value]; valid keys: "
                         f"{', '.join(axis_names())}")
    if method not in method_names() and not is_preset(method):
        raise UsageError(f"--sparse_method must be one of {', '.join(method_names())}, or a method preset "
                         f"({', '.join(preset_names()) or 'none'}); got {method!r} in --methods {text!r}")
    known = {axis.key: axis for axis in axes()}
    aliases = {alias: axis.key for axis in known.values() if axis.applies(method)
               for alias in (*axis.aliases, axis.flag) if alias != axis.key}
    variant: Variant = {}
    for part in parts:
        flag, _, raw = part.partition("=")
        flag, raw = flag.strip(), raw.strip()
        flag = flag if flag in known else aliases.get(flag, flag)
        if flag not in known:
            raise UsageError(f"--methods {text!r}: unknown variant key {flag!r}; valid keys: "
                             f"{', '.join(known) or 'none'} (syntax: method:key=value[:key=value])")
        axis = known[flag]
        if not axis.applies(method):
            where = ", ".join(axis.applies_to) if axis.applies_to else "every method but dense"
            raise UsageError(f"--methods {text!r}: {flag} applies to {where}, not to {method}")
        if flag in variant:
            raise UsageError(f"--methods {text!r}: {flag} is given twice")
        value = _parse_value(axis, raw, text)
        if value != axis.default:
            variant[flag] = value
    order = {name: i for i, name in enumerate(known)}
    return MethodSpec(method, tuple(sorted(variant.items(), key=lambda kv: order[kv[0]])))


def _parse_value(axis: VariantAxis, raw: str, spec: str) -> Any:
    if not raw:
        raise UsageError(f"--methods {spec!r}: {axis.key} has no value")
    if axis.choices is not None:
        choices = [format_value(c) for c in axis.choices()]
        if raw not in choices:
            raise UsageError(f"--methods {spec!r}: {axis.key} must be one of {', '.join(choices)}; got {raw!r}")
    value = _typed(axis, raw, spec)
    if axis.check is not None:
        try:
            axis.check(value)
        except UsageError as err:
            raise UsageError(f"--methods {spec!r}: {err}") from None
    return value


def _typed(axis: VariantAxis, raw: str, spec: str) -> Any:
    """`raw` converted to the axis flag's declared type (bool, int, float, or text)."""
    flag, declared = axis.key, _flag_fields()[axis.flag].type
    kind = declared if isinstance(declared, str) else getattr(declared, "__name__", str(declared))
    try:
        if kind.startswith("bool"):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError:
        what = {"bool": "true or false", "int": "an integer", "float": "a number"}[kind.split(" ")[0]]
        raise UsageError(f"--methods {spec!r}: {flag} takes {what}; got {raw!r}") from None
    return raw


def parse_method_specs(text: str, grids: Mapping[str, str] | None = None) -> list[MethodSpec]:
    """The comma-separated `--methods` of a sweep, validated, duplicates (same row) dropped. An item naming one of
    `grids` (name -> such a list; a sweep's `METHOD_GRIDS`) stands for that list."""
    grids = grids or {}
    items = [part for item in text.split(",") if item.strip()
             for part in (grids[item.strip()].split(",") if item.strip() in grids else [item])]
    specs = [parse_method_spec(item) for item in items]
    if not specs:
        raise UsageError("--methods is empty")
    return list({spec.row: spec for spec in specs}.values())
