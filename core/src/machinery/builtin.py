"""The built-in transports, registered through the same hooks as any plugin.

- ``memory://``: broker, backend and lock inside one process (tests, eager mode).
- ``sqlite:///path.db``: broker, backend and lock on one SQLite file, safe across processes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .plugins import Kind, SchemeRow, hookimpl, scheme_of

if TYPE_CHECKING:
    from .backend import Backend
    from .broker import Broker
    from .config import Config
    from .lock import Lock

DISTRIBUTION = "machinery-core"
KINDS: tuple[Kind, ...] = ("broker", "backend", "lock")


@hookimpl
def machinery_schemes() -> list[SchemeRow]:
    return [SchemeRow(scheme, kind, DISTRIBUTION) for scheme in ("memory", "sqlite") for kind in KINDS]


@hookimpl
def machinery_broker(url: str, config: Config) -> Broker | None:
    scheme = scheme_of(url)
    if scheme == "memory":
        from .brokers.memory import MemoryBroker

        return MemoryBroker.from_url(url, config)
    if scheme == "sqlite":
        from .brokers.sqlite import SQLiteBroker

        return SQLiteBroker.from_url(url, config)
    return None


@hookimpl
def machinery_backend(url: str, config: Config) -> Backend | None:
    scheme = scheme_of(url)
    if scheme == "memory":
        from .backends.memory import MemoryBackend

        return MemoryBackend.from_url(url, config)
    if scheme == "sqlite":
        from .backends.sqlite import SQLiteBackend

        return SQLiteBackend.from_url(url, config)
    return None


@hookimpl
def machinery_lock(url: str, config: Config) -> Lock | None:
    scheme = scheme_of(url)
    if scheme == "memory":
        from .locks.memory import MemoryLock

        return MemoryLock.from_url(url, config)
    if scheme == "sqlite":
        from .locks.sqlite import SQLiteLock

        return SQLiteLock.from_url(url, config)
    return None
