"""The built-in transports, registered through the same hooks as any plugin.

- ``memory://``: broker, backend and lock inside one process (tests, eager mode).
- ``sqlite:///path.db``: broker, backend and lock on one SQLite file, safe across processes.

The classes are imported on first use, so listing plugins stays cheap.
"""

from __future__ import annotations

from .plugins import transport

__all__ = ["memory", "sqlite"]

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
