"""``redis://`` lock: ``SET key token NX PX ttl``, released by a compare-and-delete Lua script.

Each :class:`RedisLock` object is one owner (a random token): ``release`` by another owner does nothing,
and a lock that expired and was taken by someone else is not released by its former holder.
"""

from __future__ import annotations

import uuid
from typing import Any

from machinery.capabilities import Capability
from machinery.config import Config
from machinery.errors import BackendError

from . import scripts
from .client import Connection
from .url import RedisTarget, parse_url

__all__ = ["RedisLock"]


class RedisLock:
    """A named, expiring mutex across processes. Build it with :meth:`from_url`; no I/O until used."""

    capabilities = frozenset({Capability.MULTI_PROCESS})

    def __init__(self, target: RedisTarget | str, config: Config | None = None) -> None:
        self.config = config or Config()
        self.target = parse_url(target) if isinstance(target, str) else target
        self.conn = Connection(self.target, self.config, BackendError)
        self.token = uuid.uuid4().hex.encode()

    @classmethod
    def from_url(cls, url: str, config: Config, **options: Any) -> RedisLock:
        return cls(parse_url(url), config, **options)

    def __repr__(self) -> str:
        return f"<RedisLock {self.target.describe()}>"

    def acquire(self, key: str, ttl: float) -> bool:
        """Take ``key`` for ``ttl`` seconds if nobody holds it (``SET NX PX``)."""
        ms = max(1, int(ttl * 1000))
        taken = self.conn.call("taking a lock", lambda: self.conn.client.set(key, self.token, nx=True, px=ms))
        return bool(taken)

    def release(self, key: str) -> None:
        """Give ``key`` back if this owner still holds it."""
        self.conn.call(
            "releasing a lock", lambda: scripts.RELEASE_LOCK(self.conn.client, [key], [self.token])
        )

    def close(self) -> None:
        self.conn.close()
