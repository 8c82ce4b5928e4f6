"""The built-in transports, registered through the same hooks as any plugin.

- ``memory://``: broker, backend and lock inside one process (tests, eager mode).
- ``sqlite:///path.db``: broker, backend and lock on one SQLite file, safe across processes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .plugins import Kind, SchemeRow, hookimpl, scheme_of

if TYPE_CHECKING:
    from .backend import Backend
    from .broker import Broker
    from .config import Config
    from .lock import Lock

DISTRIBUTION = "machinery-core"


#: (scheme, kind) -> (module, class): imported on first use, so listing plugins stays cheap.
_CLASSES: dict[tuple[str, Kind], tuple[str, str]] = {
    ("memory", "broker"): ("machinery.transports.memory.broker", "MemoryBroker"),
    ("memory", "backend"): ("machinery.transports.memory.backend", "MemoryBackend"),
    ("memory", "lock"): ("machinery.transports.memory.lock", "MemoryLock"),
    ("sqlite", "broker"): ("machinery.transports.sqlite.broker", "SQLiteBroker"),
    ("sqlite", "backend"): ("machinery.transports.sqlite.backend", "SQLiteBackend"),
    ("sqlite", "lock"): ("machinery.transports.sqlite.lock", "SQLiteLock"),
}


#: Go Machinery's bare words (matched by prefix, as Go does): ``eager`` runs everything in this process
#: (the broker word also turns ``Config.eager`` on, in the app), ``null`` discards results.
_GO_WORDS: dict[tuple[str, Kind], tuple[str, str]] = {
    ("eager", "broker"): ("machinery.transports.memory.broker", "MemoryBroker"),
    ("eager", "backend"): ("machinery.transports.memory.backend", "MemoryBackend"),
    ("eager", "lock"): ("machinery.transports.memory.lock", "MemoryLock"),
    ("null", "backend"): ("machinery.transports.null", "NullBackend"),
}


def go_word(url: str) -> str:
    """``"eager"`` or ``"null"`` when ``url`` is one of Go Machinery's bare words, else ``""``."""
    if "://" in url:
        return ""
    lowered = url.strip().lower()
    return next((word for word in ("eager", "null") if lowered.startswith(word)), "")


@hookimpl
def machinery_schemes() -> list[SchemeRow]:
    return [SchemeRow(scheme, kind, DISTRIBUTION) for scheme, kind in _CLASSES]


def _build(kind: Kind, url: str, config: Config) -> Any:
    word = go_word(url)
    if word:
        target = _GO_WORDS.get((word, kind))
        if target is None:
            return None
        module, name = target
        cls = getattr(importlib.import_module(module), name)
        return cls.from_url("memory://eager" if word == "eager" else url, config)
    target = _CLASSES.get((scheme_of(url), kind))
    if target is None:
        return None
    module, name = target
    return getattr(importlib.import_module(module), name).from_url(url, config)


@hookimpl
def machinery_broker(url: str, config: Config) -> Broker | None:
    broker: Broker | None = _build("broker", url, config)
    return broker


@hookimpl
def machinery_backend(url: str, config: Config) -> Backend | None:
    backend: Backend | None = _build("backend", url, config)
    return backend


@hookimpl
def machinery_lock(url: str, config: Config) -> Lock | None:
    lock: Lock | None = _build("lock", url, config)
    return lock
