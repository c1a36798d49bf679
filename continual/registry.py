"""Name registries (timm-style): a name in a config maps to a class or factory in one place.

Entries are registered lazily as ``"module:attribute"`` strings so that listing names (for
``continual list`` and config validation) never imports torch. Packages that provide entries
are discovered through the ``continual.providers`` entry-point group; importing a provider
module registers its names.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable

from continual.errors import ConfigError

# Used when the package metadata is not installed (running from a bare checkout).
_FALLBACK_PROVIDERS = ("strategies", "streams")
_providers_loaded = False


def _resolve(target: str | Any) -> Any:
    """The object of a "module:attr" string, or the module of a plain "module" (importing it);
    otherwise ``target`` itself."""
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    loaded = importlib.import_module(module)
    return getattr(loaded, attr) if attr else loaded


@dataclass
class Entry:
    name: str
    target: str | Any  # "module:attr" or "module" (lazy), or the object itself
    summary: str
    # A light stand-in read before the target is needed (a strategy's declaration: its Params and
    # checks, without torch or avalanche); None: the target itself is read.
    declaration: str | Any | None = None

    def load(self) -> Any:
        self.target = _resolve(self.target)
        return self.target


class Registry:
    """A named collection of strategies, streams, control sets or reference sets."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, target: str | Any, summary: str, declaration: str | Any | None = None) -> None:
        """Register ``target`` ("module:attr", "module" or an object) under ``name``; ``declaration``
        (likewise) is what :meth:`declared` answers without loading the target."""
        self._entries[name] = Entry(name, target, summary, declaration)

    def register(self, name: str, summary: str | None = None) -> Callable[[Any], Any]:
        """Decorator form of :meth:`add` for user code: ``@STRATEGIES.register("mine")``."""

        def wrap(obj: Any) -> Any:
            doc = (obj.__doc__ or "").strip().splitlines()
            self.add(name, obj, summary or (doc[0] if doc else ""))
            return obj

        return wrap

    def names(self) -> list[str]:
        load_providers()
        return sorted(self._entries)

    def summaries(self) -> dict[str, str]:
        load_providers()
        return {n: self._entries[n].summary for n in sorted(self._entries)}

    def check(self, name: str, key: str) -> None:
        """Raise a one-line ConfigError if ``name`` is not registered."""
        names = self.names()
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"{key}: unknown {self.kind} '{name}'{hint}; choose one of: {', '.join(names)}"
            )

    def get(self, name: str, key: str = "name") -> Any:
        self.check(name, key)
        return self._entries[name].load()

    def declared(self, name: str, key: str = "name") -> Any:
        """What checks read before a run builds anything: for an entry with a declaration, a
        :class:`continual.strategy.Declared` (its members, and the target loaded when called);
        otherwise the target itself."""
        from continual.strategy import Declared

        self.check(name, key)
        entry = self._entries[name]
        if entry.declaration is None:
            return entry.load()
        return Declared(_resolve(entry.declaration), entry.load)


def load_providers() -> None:
    """Import every provider module once so that it registers its names."""
    global _providers_loaded
    if _providers_loaded:
        return
    _providers_loaded = True
    found = list(entry_points(group="continual.providers"))
    if found:
        for ep in found:
            ep.load()
    else:
        for module in _FALLBACK_PROVIDERS:
            importlib.import_module(module)


STRATEGIES = Registry("strategy")
STREAMS = Registry("stream")
CONTROLS = Registry("control set")
# Data a method reads beside the sessions (ZSCL's reference images and sentences), provided by
# stream packages and looked up by name, so that a strategy imports no stream module.
REFERENCES = Registry("reference set")
