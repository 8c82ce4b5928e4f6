"""The built-in transports, registered through the same hooks as any plugin.

- ``memory://``: broker, backend and lock inside one process (tests, eager mode).
- ``sqlite:///path.db``: broker, backend and lock on one SQLite file, safe across processes; a send
  stores the PENDING state and the message in one transaction when broker and backend share the file.
- Go Machinery's bare words ``eager`` (broker, backend, lock in this process) and ``null`` (a result
  backend that discards states), matched by prefix as Go does: not URL schemes, so hooks of their own.

The classes are imported on first use, so listing plugins stays cheap.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .plugins import Kind, hookimpl, transport

if TYPE_CHECKING:
    from .backend import Backend
    from .broker import Broker
    from .config import Config
    from .lock import Lock
    from .signature import Signature, TaskState
    from .transports.sqlite.backend import SQLiteBackend
    from .transports.sqlite.broker import SQLiteBroker

__all__ = ["go_word", "memory", "sqlite"]

memory = transport(
    ["memory"],
    broker="machinery.transports.memory.broker:MemoryBroker",
    backend="machinery.transports.memory.backend:MemoryBackend",
    lock="machinery.transports.memory.lock:MemoryLock",
    distribution="machinery-core",
)

sqlite = transport(
    ["sqlite"],
    broker="machinery.transports.sqlite.broker:SQLiteBroker",
    backend="machinery.transports.sqlite.backend:SQLiteBackend",
    lock="machinery.transports.sqlite.lock:SQLiteLock",
    distribution="machinery-core",
)


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


def _build_go_word(kind: Kind, url: str, config: Config) -> Any:
    word = go_word(url)
    target = _GO_WORDS.get((word, kind)) if word else None
    if target is None:
        return None
    module, name = target
    cls = getattr(importlib.import_module(module), name)
    return cls.from_url("memory://eager" if word == "eager" else url, config)


@hookimpl
def machinery_broker(url: str, config: Config) -> Broker | None:
    broker: Broker | None = _build_go_word("broker", url, config)
    return broker


@hookimpl
def machinery_backend(url: str, config: Config) -> Backend | None:
    backend: Backend | None = _build_go_word("backend", url, config)
    return backend


@hookimpl
def machinery_lock(url: str, config: Config) -> Lock | None:
    lock: Lock | None = _build_go_word("lock", url, config)
    return lock


@hookimpl
def machinery_publish_with_states(
    broker: Broker, backend: Backend, signatures: Sequence[Signature], states: Sequence[TaskState]
) -> bool | None:
    """``sqlite://`` broker and backend on one file: PENDING states and messages in one transaction."""
    broker_class, backend_class = _sqlite_classes()
    if not isinstance(broker, broker_class) or not isinstance(backend, backend_class):
        return None
    return broker.publish_with_states(signatures, states, backend) or None


@functools.cache
def _sqlite_classes() -> tuple[type[SQLiteBroker], type[SQLiteBackend]]:
    # imported on the first send, not when plugins are listed; cached: this runs on every send_task
    from .transports.sqlite.backend import SQLiteBackend
    from .transports.sqlite.broker import SQLiteBroker

    return SQLiteBroker, SQLiteBackend
