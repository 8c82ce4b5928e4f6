"""``memcache://`` lock: ``add`` with an expiry, released only by its owner (``gets`` + ``cas``).

Each :class:`MemcacheLock` object is one owner (a random token stored as the value). ``acquire`` is
memcached's ``add``: it stores only when the key is absent, atomically on the key's server. ``release``
reads the key with its CAS id and, when the token is ours, replaces it with an already-expired item in
one ``cas`` (memcached's text protocol has no compare-and-delete): a lock that expired and was taken by
someone else in between is left alone.

A lock is held at least ``ttl`` seconds and at most one second more (memcached's clock ticks once a
second; see :func:`~machinery_memcache.client.exptime`). Keys memcached cannot store (periodic-task lock
names contain spaces) are replaced by ``machinery-lock:`` and their SHA-256.
"""

from __future__ import annotations

import hashlib
import uuid

from machinery.capabilities import Capability
from machinery.config import Config

from .client import Cluster, check_key, exptime
from .errors import InvalidKeyError, MemcacheConnectionError
from .settings import settings_of
from .url import MemcacheTarget, parse_url

__all__ = ["MemcacheLock", "lock_key"]

#: memcached reads a negative expiration as "expired already": the ``cas`` that releases a lock.
EXPIRED = -1


def lock_key(name: str) -> bytes:
    """The memcached key of lock ``name``: the name itself when memcached accepts it, else a digest."""
    try:
        return check_key(name, "lock name")
    except InvalidKeyError:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
        return f"machinery-lock:{digest}".encode()


class MemcacheLock:
    """A named, expiring mutex across processes. Build it with :meth:`from_url`; no I/O until used."""

    capabilities = frozenset({Capability.MULTI_PROCESS})

    def __init__(self, target: MemcacheTarget | str, config: Config | None = None) -> None:
        self.config = config or Config()
        if isinstance(target, str):
            target = parse_url(target, settings_of(self.config))
        self.target = target
        self.cluster = Cluster(target)
        self.token = uuid.uuid4().hex.encode()

    @classmethod
    def from_url(cls, url: str, config: Config) -> MemcacheLock:
        """A lock for ``url`` (see :mod:`machinery_memcache.url`). No I/O."""
        return cls(parse_url(url, settings_of(config)), config)

    def __repr__(self) -> str:
        return f"<MemcacheLock {self.target.describe()}>"

    def acquire(self, key: str, ttl: float) -> bool:
        """Take ``key`` for at least ``ttl`` seconds if nobody holds it (``add``).

        When the connection drops before the reply (a stale pooled connection after a server restart),
        the stored value tells what happened: our token means we hold it, no value means the ``add`` never
        arrived and it is sent again, another token means someone else holds it."""
        raw_key = lock_key(key)
        try:
            return self.cluster.add("taking a lock", raw_key, self.token, exptime(ttl))
        except MemcacheConnectionError:
            value, _ = self.cluster.gets("taking a lock", raw_key)
            if value is None:
                return self.cluster.add("taking a lock", raw_key, self.token, exptime(ttl))
            return bool(value == self.token)

    def release(self, key: str) -> None:
        """Give ``key`` back if this owner still holds it."""
        raw_key = lock_key(key)
        value, cas = self.cluster.gets("releasing a lock", raw_key)
        if value == self.token and cas is not None:
            # False/None: it expired or changed hands since the read; it is not ours to free then
            self.cluster.cas("releasing a lock", raw_key, b"released", cas, EXPIRED)

    def close(self) -> None:
        self.cluster.close()
