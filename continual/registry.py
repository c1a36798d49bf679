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


@dataclass
class Entry:
    name: str
    target: str | Any  # "module:attr" (lazy) or the object itself
    summary: str

    def load(self) -> Any:
        if isinstance(self.target, str):
            module, _, attr = self.target.partition(":")
            self.target = getattr(importlib.import_module(module), attr)
        return self.target


class Registry:
    """A named collection of strategies, streams or control sets."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, target: str | Any, summary: str) -> None:
        """Register ``target`` ("module:attr" or an object) under ``name``."""
        self._entries[name] = Entry(name, target, summary)

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
