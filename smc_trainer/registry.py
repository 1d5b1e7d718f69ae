"""One small registry class for everything registered by name: sparse methods and pruning criteria.

A registry is filled by its decorator (`@METHODS.register("gmp")`) as the modules of its package are imported;
the first lookup imports them all, then the installed entry-point plugins, so every name is known before one
is checked. Each entry may bring its own hyper-parameters (`config=`, a `HyperParameters` dataclass), in the
spirit of peft's `register_peft_method(name, config_cls, model_cls)`: the CLI, the keys and the docs are
generated from those configs. This module imports no other module of the package but `errors` and `plugins`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from smc_trainer.errors import UsageError
from smc_trainer.plugins import import_registry_modules

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Classes by name, for one kind of thing (`kind`: "sparse method", "criterion").

    `parameter` is how errors name the choice (`--sparse_method`); `package` is the package whose modules
    register the built-in entries, imported on first use.
    """

    def __init__(self, kind: str, parameter: str, path: Iterable[str], package: str,
                 check: Callable[[str, T], None] | None = None):
        self.kind = kind
        self.parameter = parameter
        self._path = list(path)
        self._package = package
        self._check = check
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str, config: type | None = None) -> Callable[[T], T]:
        """Class decorator: make `cls` available as `name`, with its own hyper-parameters `config` (a
        `HyperParameters` dataclass; default: the class's `config_class`)."""

        def wrap(cls: T) -> T:
            if name in self._entries and self._entries[name] is not cls:
                raise UsageError(f"{self.kind} {name!r} is registered twice")
            if self._check is not None:
                self._check(name, cls)
            cls.name = name
            if config is not None:
                cls.config_class = config
            self._entries[name] = cls
            return cls

        return wrap

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True  # before importing: a plugin that reads the registry while loading must not loop
            import_registry_modules(self._path, self._package)

    def names(self) -> list[str]:
        """Every registered name, in a stable order (each class's `order`, then the name)."""
        self._load()
        return sorted(self._entries, key=lambda n: (getattr(self._entries[n], "order", 50), n))

    def get(self, name: str) -> T:
        """The class registered as `name`; a UsageError naming the valid choices otherwise."""
        self._load()
        if name not in self._entries:
            raise UsageError(f"{self.parameter} must be one of {', '.join(self.names())}; got {name!r}")
        return self._entries[name]

    def items(self) -> Iterator[tuple[str, T]]:
        for name in self.names():
            yield name, self._entries[name]

    def configs(self) -> dict[str, Any]:
        """The hyper-parameter class of every entry that declares one (`config_class`), by name."""
        return {name: cls.config_class for name, cls in self.items()
                if getattr(cls, "config_class", None) is not None and cls.config_class.__dataclass_fields__}

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)
