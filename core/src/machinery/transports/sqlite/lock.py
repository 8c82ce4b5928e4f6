"""``sqlite:///path.db``: a named, expiring lock shared by every process using the file.

``acquire`` is one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE expires_at <= now`` statement, so
taking a free or expired key is atomic across processes. Each :class:`SQLiteLock` object is one
owner (a random token): ``release`` by another owner does nothing.
"""

from __future__ import annotations

import os
import time
import uuid

from ...capabilities import Capability
from ...config import Config
from ...errors import MachineryError
from .store import SQLiteStore, SQLiteTarget, on_fork, parse_sqlite_url

__all__ = ["SQLiteLock"]


class SQLiteLock:
    """Cross-process lock on a SQLite file. Not re-entrant: a key this owner holds is not taken again."""

    capabilities = frozenset({Capability.MULTI_PROCESS})

    def __init__(self, path: str | os.PathLike[str] | SQLiteTarget, config: Config | None = None) -> None:
        self.config = config or Config()
        target = path if isinstance(path, SQLiteTarget) else SQLiteTarget(os.path.abspath(os.fspath(path)))
        self.target = target
        self.owner = uuid.uuid4().hex
        self._store = SQLiteStore(target, MachineryError)
        on_fork(self)

    def _after_fork(self) -> None:
        self.owner = uuid.uuid4().hex  # a forked copy is another owner: it cannot release our keys

    @classmethod
    def from_url(cls, url: str, config: Config) -> SQLiteLock:
        """``sqlite:///relative.db`` or ``sqlite:////absolute.db``. No I/O."""
        return cls(parse_sqlite_url(url), config)

    def __repr__(self) -> str:
        return f"<SQLiteLock {self.target.path} owner={self.owner[:8]}>"

    def acquire(self, key: str, ttl: float) -> bool:
        """Take ``key`` for ``ttl`` seconds if nobody holds it (an expired holder is replaced)."""
        now = time.time()
        cursor = self._store.execute_write(
            "lock acquire",
            "INSERT INTO locks (key, owner, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at "
            "WHERE locks.expires_at <= ?",
            (key, self.owner, now + ttl, now),
        )
        return cursor.rowcount == 1

    def release(self, key: str) -> None:
        """Give ``key`` back if this owner holds it."""
        self._store.execute_write(
            "lock release", "DELETE FROM locks WHERE key = ? AND owner = ?", (key, self.owner)
        )

    def holder(self, key: str) -> str | None:
        """The owner token holding ``key`` now, or None."""
        row = self._store.execute(
            "lock holder", "SELECT owner FROM locks WHERE key = ? AND expires_at > ?", (key, time.time())
        ).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        """Close the connections. Idempotent."""
        self._store.close()
