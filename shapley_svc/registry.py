"""One registry for every pluggable part: estimators, value functions, stopping rules, layouts, plan searchers.

Entries are lazy ``module:object`` strings, so naming a part imports only its module. An unknown name is an
error naming the closest known ones ("did you mean"); a loaded object is checked against the registry's base
class (a class registry) or type (a registry of data, such as layouts); parameters are checked against the
constructor's signature before anything is built, so a job spec fails before any model loads.

Example:
    >>> from shapley_svc.estimators import ESTIMATORS
    >>> ESTIMATORS.key("default")
    'structured_gp'
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from shapley_svc.errors import ConfigError, ShapleySvcError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    """Where a registered part lives (``package.module:Object``), one line for ``--help``, and its options:
    ``bound`` keywords are always passed (a task's name), ``defaults`` are passed unless the caller gives them."""

    target: str
    description: str = ""
    bound: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)


class Registry(Mapping[str, Any], Generic[T]):
    """Named parts of one kind; ``base`` is the class every entry must be (or subclass, for class entries).

    As a mapping it reads like a dict of the loaded parts: ``LAYOUTS["llama"]``, ``"llama" in LAYOUTS``.
    """

    def __init__(
        self,
        kind: str,
        base: type[T],
        entries: Mapping[str, Entry],
        *,
        aliases: Mapping[str, str] | None = None,
        error: type[ShapleySvcError] = ConfigError,
        unknown: str = "unknown",
        advice: str = "",
    ) -> None:
        self.kind = kind
        self.base = base
        self.entries = dict(entries)
        self.aliases = dict(aliases or {})
        self._error, self._unknown, self._advice = error, unknown, advice

    def __getitem__(self, name: str) -> Any:
        return self.load(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries or name in self.aliases

    def names(self) -> tuple[str, ...]:
        """Every name a caller may use: aliases first, then the entries."""
        return (*self.aliases, *self.entries)

    def key(self, name: str) -> str:
        """The entry key of ``name`` (an alias resolved); an error with the closest names if unknown."""
        key = self.aliases.get(name, name)
        if key in self.entries:
            return key
        close = difflib.get_close_matches(name, self.names(), n=3)
        hint = f": did you mean {', '.join(repr(match) for match in close)}?" if close else "."
        advice = f" {self._advice}" if self._advice else ""
        raise self._error(f"{self._unknown} {self.kind} {name!r}{hint} Known: {', '.join(self.names())}.{advice}")

    def load(self, name: str) -> Any:
        """The registered object (a class, a function or a data instance), imported on first use."""
        key = self.key(name)
        module_name, _, attribute = self.entries[key].target.partition(":")
        loaded = getattr(importlib.import_module(module_name), attribute)
        if not _conforms(loaded, self.base):
            raise ConfigError(f"{self.kind} {key!r} ({self.entries[key].target}) is not a {self.base.__name__}")
        return loaded

    def parameters(self, name: str, positional: int = 0) -> tuple[str, ...]:
        """The keywords the constructor of ``name`` takes, after ``positional`` leading arguments, less bound ones."""
        key = self.key(name)
        signature = inspect.signature(self.load(key))
        names = [parameter for parameter in signature.parameters if parameter not in ("self", "args", "kwargs")]
        return tuple(name for name in names[positional:] if name not in self.entries[key].bound)

    def check_params(self, name: str, params: Mapping[str, Any] | None, positional: int = 0) -> str:
        """The entry key of ``name``; an error naming each unknown parameter and the closest accepted one."""
        key = self.key(name)
        accepted = list(self.parameters(key, positional))
        unknown = [option for option in params or {} if option not in accepted]
        if unknown:
            hints = "".join(
                f" (did you mean {close[0]!r}?)"
                for option in unknown
                if (close := difflib.get_close_matches(option, accepted, n=1))
            )
            raise ConfigError(f"{self.kind} {key!r} does not take {unknown}{hints}; it takes {accepted}")
        return key

    def build(self, name: str, *args: Any, params: Mapping[str, Any] | None = None) -> T:
        """``name`` built from ``args``, its defaults, ``params`` and its bound options."""
        key = self.check_params(name, params, positional=len(args))
        entry = self.entries[key]
        options = {**entry.defaults, **(params or {}), **entry.bound}
        factory = self.load(key)
        try:
            return factory(*args, **options)
        except (TypeError, ValueError) as error:  # a missing parameter, or a string where a number belongs
            required = [
                parameter.name
                for parameter in list(inspect.signature(factory).parameters.values())[len(args) :]
                if parameter.default is inspect.Parameter.empty and parameter.name not in ("self", "args", "kwargs")
            ]
            raise ConfigError(
                f"{self.kind} {key!r} rejected its parameters {dict(params or {})}: {error}; it needs {required}"
            ) from error

    def describe(self) -> str:
        """``name: description`` for every entry, for ``--help``."""
        return "; ".join(f"{name}: {entry.description}" for name, entry in self.entries.items())


def _conforms(loaded: Any, base: type) -> bool:
    """A class entry subclasses ``base`` (or has every member of a protocol ``base``); data is an instance."""
    if getattr(base, "_is_protocol", False):
        members = {name for name in (*vars(base), *getattr(base, "__annotations__", {})) if not name.startswith("_")}
        return inspect.isclass(loaded) and all(hasattr(loaded, member) for member in members)
    return issubclass(loaded, base) if inspect.isclass(loaded) else isinstance(loaded, base)
