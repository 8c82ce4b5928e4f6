"""``memory://NAME``: a lock shared by the threads of one process (no cross-process guarantee)."""

from __future__ import annotations

import threading
import time
import uuid

from ...config import Config
from .store import shared, store_name

__all__ = ["MemoryLock"]


class _Store:
    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.holders: dict[str, tuple[str, float]] = {}  # key -> (owner, expires at)


class MemoryLock:
    """Each instance is one owner; ``release`` by another instance does nothing."""

    def __init__(self, config: Config | None = None, name: str = "") -> None:
        self.config = config or Config()
        self._store = shared("lock", f"memory://{name}", _Store)
        self._owner = uuid.uuid4().hex

    @classmethod
    def from_url(cls, url: str, config: Config) -> MemoryLock:
        return cls(config, store_name(url))

    def acquire(self, key: str, ttl: float) -> bool:
        now = time.monotonic()
        with self._store.mutex:
            holder = self._store.holders.get(key)
            if holder is not None and holder[1] > now:
                return False
            self._store.holders[key] = (self._owner, now + ttl)
            return True

    def release(self, key: str) -> None:
        with self._store.mutex:
            holder = self._store.holders.get(key)
            if holder is not None and holder[0] == self._owner:
                del self._store.holders[key]

    def close(self) -> None:
        return None
