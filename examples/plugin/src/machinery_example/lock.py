"""``ExampleLock``: each object is one owner; an expired key is free again."""

from __future__ import annotations

import time
import uuid

from machinery.config import Config

from .store import Store, store_for
from .url import parse_url

__all__ = ["ExampleLock"]


class ExampleLock:
    """A named, expiring mutex in one ``example://NAME`` store (periodic tasks fire once per tick)."""

    def __init__(self, url: str, config: Config | None = None) -> None:
        self.config = config or Config()
        self.store: Store = store_for(parse_url(url, config).name)
        self.owner = uuid.uuid4().hex

    @classmethod
    def from_url(cls, url: str, config: Config) -> ExampleLock:
        return cls(url, config)

    def acquire(self, key: str, ttl: float) -> bool:
        now = time.monotonic()
        with self.store.cond:
            holder = self.store.locks.get(key)
            if holder is not None and holder[1] > now:
                return False
            self.store.locks[key] = (self.owner, now + ttl)
            return True

    def release(self, key: str) -> None:
        with self.store.cond:
            holder = self.store.locks.get(key)
            if holder is not None and holder[0] == self.owner:
                del self.store.locks[key]

    def close(self) -> None:
        return None
