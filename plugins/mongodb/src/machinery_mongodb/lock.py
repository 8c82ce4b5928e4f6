"""``mongodb://`` lock: one document per key in ``locks``, ``{_id: key, owner, expires_at}``.

``acquire`` is one upsert whose filter matches the key only when it is free (absent or expired):
when someone holds it the upsert tries to insert a second ``_id`` and the unique ``_id`` index refuses
(duplicate key), so exactly one racer wins. Expiry times come from the client's clock, so the hosts
sharing a lock need synchronised clocks (NTP), as the TTL index does. (The server's ``$$NOW`` would be
better, but SecantusDB, the test server, compares it wrongly with stored dates.)

Each :class:`MongoLock` object is one owner (a random token): ``release`` deletes the document only if
that owner still holds it. A TTL index on ``expires_at`` removes old lock documents.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.errors import DuplicateKeyError, PyMongoError

from machinery.capabilities import Capability
from machinery.config import Config

from .client import LOCKS, MongoConnection
from .url import MongoTarget, parse_url

__all__ = ["MongoLock"]


class MongoLock:
    """A named, expiring mutex across processes. Build it with :meth:`from_url`; no I/O until used."""

    capabilities = frozenset({Capability.MULTI_PROCESS})

    def __init__(self, target: MongoTarget | str, config: Config | None = None) -> None:
        self.config = config or Config()
        self.target = parse_url(target) if isinstance(target, str) else target
        self.conn = MongoConnection(self.target, self.config)
        self.token = uuid.uuid4().hex

    @classmethod
    def from_url(cls, url: str, config: Config) -> MongoLock:
        return cls(parse_url(url), config)

    def __repr__(self) -> str:
        return f"<MongoLock {self.target.describe()} db={self.conn.database_name}>"

    def acquire(self, key: str, ttl: float) -> bool:
        """Take ``key`` for ``ttl`` seconds if nobody holds it."""
        now = datetime.now(UTC)
        free: dict[str, Any] = {"_id": key, "expires_at": {"$lte": now}}
        take = {"$set": {"owner": self.token, "expires_at": now + timedelta(seconds=max(0.001, ttl))}}
        collection = self.conn.collection(LOCKS)
        try:
            collection.update_one(free, take, upsert=True)
        except DuplicateKeyError:
            return False  # held: the upsert's insert met the holder's document
        except PyMongoError as exc:
            raise self.conn.error(f"taking the lock {key!r}", exc) from None
        return True

    def release(self, key: str) -> None:
        """Give ``key`` back if this owner still holds it."""
        with self.conn.translating(f"releasing the lock {key!r}"):
            self.conn.collection(LOCKS).delete_one({"_id": key, "owner": self.token})

    def close(self) -> None:
        self.conn.close()
