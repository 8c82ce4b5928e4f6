"""The DynamoDB lock: one item per key in the ``locks_table`` setting's table (``machinery_locks``),
``{LockKey, Owner, ExpiresAt, TTL}``.

``acquire`` is one conditional ``PutItem`` that writes only when the key is free (no item, or one whose
``ExpiresAt`` has passed): DynamoDB applies the condition and the write atomically, so exactly one racer
wins. ``ExpiresAt`` (epoch seconds, to the millisecond) comes from the client's clock, so the hosts
sharing a lock need synchronised clocks (NTP). ``TTL`` lets DynamoDB delete old items (lazily; the
condition never trusts it).

Each :class:`DynamoDBLock` object is one owner (a random token): ``release`` deletes the item only if that
owner still holds it. It is what ``Config.lock`` falls back to when the result backend is DynamoDB, so
periodic tasks and chord recovery share one lock across hosts without another server.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

from machinery.capabilities import Capability
from machinery.config import Config

from .settings import DynamoDBSettings
from .tables import Tables
from .url import AWSTarget, parse_backend_url

__all__ = ["DynamoDBLock"]

#: seconds an expired lock item stays for DynamoDB's TTL sweep (a held one is never swept early)
_SWEEP_AFTER = 3600


class DynamoDBLock:
    """A named, expiring mutex across processes and hosts. Build it with :meth:`from_url`; no I/O
    until used."""

    capabilities = frozenset({Capability.MULTI_PROCESS})

    def __init__(self, target: AWSTarget, config: Config | None = None, **options: Any) -> None:
        self.config = config or Config()
        self.target = target
        self.settings = DynamoDBSettings.of(self.config).with_query(
            target.options, target.where, values=options
        )
        self.table = self.settings.locks_table
        self._tables = Tables(target, self.config, self.settings, {self.table: "LockKey"})
        self.token = uuid.uuid4().hex

    @classmethod
    def from_url(cls, url: str, config: Config, **options: Any) -> DynamoDBLock:
        """A lock for a DynamoDB URL (see :mod:`machinery_sqs.url`); ``options`` are settings."""
        return cls(parse_backend_url(url), config, **options)

    def __repr__(self) -> str:
        return f"<DynamoDBLock {self.target.where} {self.table}>"

    def acquire(self, key: str, ttl: float) -> bool:
        """Take ``key`` for ``ttl`` seconds if nobody holds it."""
        now = time.time()
        expires = now + max(0.001, ttl)
        item = {
            "LockKey": {"S": key},
            "Owner": {"S": self.token},
            "ExpiresAt": {"N": f"{expires:.3f}"},
            "TTL": {"N": str(math.ceil(expires) + _SWEEP_AFTER)},
        }
        return self._tables.conditional(  # False: held by someone, and not expired
            "put_item",
            self.table,
            f"taking the lock {key!r}",
            TableName=self.table,
            Item=item,
            ConditionExpression="attribute_not_exists(LockKey) OR ExpiresAt <= :now",
            ExpressionAttributeValues={":now": {"N": f"{now:.3f}"}},
        )

    def release(self, key: str) -> None:
        """Give ``key`` back if this owner still holds it (not if it expired and another took it)."""
        self._tables.conditional(
            "delete_item",
            self.table,
            f"releasing the lock {key!r}",
            TableName=self.table,
            Key={"LockKey": {"S": key}},
            ConditionExpression="#o = :me",
            ExpressionAttributeNames={"#o": "Owner"},  # a reserved word in expressions
            ExpressionAttributeValues={":me": {"S": self.token}},
        )

    def close(self) -> None:
        """Release the HTTP connections. Idempotent."""
        self._tables.close()
