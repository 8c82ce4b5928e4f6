"""pymemcache underneath: a connection pool per server, keys placed on servers as Go's gomemcache does.

Placement (``hashing=gomemcache``, the default) follows gomemcache's ``ServerList.PickServer``: with one
server, that server; otherwise the CRC-32 (IEEE) checksum of the key's bytes (the first 256, which
covers every legal key) modulo the number of servers, indexing the servers in URL order. A Go worker
given the same list finds every key a Python worker wrote, and the other way round.
``hashing=rendezvous`` uses pymemcache's own ``RendezvousHash`` instead (what its ``HashClient`` does).

A server that cannot be reached is an error for the keys it owns; keys are never moved to another
server, which would hide them from readers that still use the full list.

Every pymemcache call goes through :meth:`Cluster.run`, which turns its exceptions into this plugin's
:mod:`~machinery_memcache.errors` naming the server. Pools are rebuilt in a forked child.
"""

from __future__ import annotations

import math
import os
import re
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeVar

from pymemcache import exceptions as mc  # type: ignore[import-untyped]
from pymemcache.client.base import PooledClient  # type: ignore[import-untyped]
from pymemcache.client.rendezvous import RendezvousHash  # type: ignore[import-untyped]

from machinery.errors import BackendError, MachineryError

from .errors import (
    InvalidKeyError,
    MemcacheConnectionError,
    OutOfMemoryError,
    ValueTooLargeError,
)
from .url import MemcacheTarget, Server

__all__ = ["MAX_KEY_LENGTH", "THIRTY_DAYS", "Cluster", "check_key", "exptime", "gomemcache_index"]

T = TypeVar("T")

#: memcached's longest key, in bytes
MAX_KEY_LENGTH = 250
#: memcached reads an expiration above this many seconds as a unix time (its REALTIME_MAXDELTA)
THIRTY_DAYS = 60 * 60 * 24 * 30
#: bytes memcached adds to key and value in an item (header, CAS, terminators), rounded up
ITEM_OVERHEAD = 96


def gomemcache_index(key: bytes, count: int) -> int:
    """The index of ``key``'s server among ``count`` servers, as gomemcache's ``PickServer`` picks it."""
    if count == 1:
        return 0
    return zlib.crc32(key[:256]) % count


def exptime(seconds: float, now: float | None = None) -> int:
    """memcached's expiration for an item that must live at least ``seconds`` (and at most one more).

    memcached's clock ticks once a second and an item set with a relative expiration ``n`` is gone at
    the ``n``-th tick, which may come less than ``n`` seconds later; one more second makes ``seconds`` a
    minimum. Beyond 30 days memcached wants a unix time, which then relies on the client's and the
    server's clocks agreeing.
    """
    relative = math.ceil(seconds) + 1
    if relative <= THIRTY_DAYS:
        return relative
    return int(time.time() if now is None else now) + relative


#: A byte memcached refuses in a key: space and the control bytes (one C-level scan, not a loop per byte).
_REFUSED_BYTE: Final = re.compile(rb"[\x00-\x20\x7f]")


def check_key(key: str, what: str) -> bytes:
    """``key`` as bytes, or :class:`InvalidKeyError` when memcached (and gomemcache) would refuse it:
    empty, longer than 250 bytes, or containing spaces or control bytes."""
    raw = key.encode("utf-8", "surrogatepass")
    if not raw or len(raw) > MAX_KEY_LENGTH or _REFUSED_BYTE.search(raw):
        raise InvalidKeyError(
            f"{what} {key[:60]!r} cannot be a memcached key: keys are 1-{MAX_KEY_LENGTH} bytes without "
            f"spaces or control characters"
        )
    return raw


#: What a pooled connection closed by the server raises on its next use.
_STALE = (mc.MemcacheUnexpectedCloseError, BrokenPipeError, ConnectionResetError)


def _translate(exc: Exception, where: str) -> MachineryError:
    if isinstance(exc, mc.MemcacheServerError) and not isinstance(exc, mc.MemcacheUnexpectedCloseError):
        text = bytes(exc.args[0]).decode("ascii", "replace") if exc.args else str(exc)
        if "too large" in text:
            return ValueTooLargeError(f"{where}: the record is larger than the server's item size limit")
        if "out of memory" in text:
            return OutOfMemoryError(
                f"{where}: the server is full and refuses new items (it was started with -M; "
                f"give it more memory with -m or shorten results_expire_in)"
            )
        return BackendError(f"{where}: server error: {text}")
    if isinstance(exc, mc.MemcacheUnexpectedCloseError):
        return MemcacheConnectionError(f"{where}: the server closed the connection")
    if isinstance(exc, OSError):
        detail = str(exc) or type(exc).__name__
        return MemcacheConnectionError(f"{where}: {detail}")
    if isinstance(exc, mc.MemcacheError):
        return BackendError(f"{where}: {type(exc).__name__}: {exc}")
    return BackendError(f"{where}: {type(exc).__name__}: {exc}")


class Cluster:
    """The servers of one URL. Thread-safe; no I/O until the first command."""

    def __init__(self, target: MemcacheTarget) -> None:
        self.target = target
        self.settings = target.settings
        self.servers = target.servers
        self._pools: dict[Server, Any] = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._ring: Any = None
        self._by_name: dict[str, Server] = {}
        if self.settings.hashing == "rendezvous" and len(self.servers) > 1:
            self._by_name = {str(s): s for s in self.servers}
            self._ring = RendezvousHash(nodes=list(self._by_name))

    # placement -------------------------------------------------------------------------------
    def server_for(self, key: bytes) -> Server:
        """The server that owns ``key``."""
        if self._ring is not None:
            return self._by_name[self._ring.get_node(key.decode("utf-8", "surrogateescape"))]
        return self.servers[gomemcache_index(key, len(self.servers))]

    def by_server(self, keys: Iterable[bytes]) -> dict[Server, list[bytes]]:
        """``keys`` grouped by the server that owns them, order kept within each group."""
        groups: dict[Server, list[bytes]] = {}
        for key in keys:
            groups.setdefault(self.server_for(key), []).append(key)
        return groups

    # connections -----------------------------------------------------------------------------
    def _tls_context(self) -> ssl.SSLContext | None:
        s = self.settings
        if not s.tls:
            return None
        context = ssl.create_default_context(cafile=s.tls_ca or None)
        if not s.tls_verify:  # an explicit opt-out in the URL: tls_verify=false
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if s.tls_cert:
            context.load_cert_chain(s.tls_cert, s.tls_key or None)
        return context

    def pool(self, server: Server) -> Any:
        """The connection pool of ``server`` (created on first use, and again in a forked child)."""
        pools = self._pools
        if self._pid == os.getpid():
            found = pools.get(server)
            if found is not None:
                return found
        with self._lock:
            if self._pid != os.getpid():
                # a forked child: the parent's sockets are not ours to use or close
                self._pools = {}
                self._pid = os.getpid()
            found = self._pools.get(server)
            if found is None:
                s = self.settings
                try:
                    tls = self._tls_context()
                except (OSError, ValueError) as exc:
                    raise BackendError(f"memcache {server}: TLS set-up failed: {exc}") from None
                found = PooledClient(
                    server.host if server.is_socket else (server.host, server.port),
                    connect_timeout=s.connect_timeout,
                    timeout=s.timeout,
                    no_delay=True,
                    default_noreply=False,
                    allow_unicode_keys=True,
                    tls_context=tls,
                )
                self._pools[server] = found
            return found

    def run(self, operation: str, server: Server, call: Callable[[Any], T], *, retry: bool = True) -> T:
        """``call(pool)`` on ``server``'s pool, with pymemcache's errors turned into ours.

        A pooled connection the server closed (it restarted, or dropped idle clients) fails on its next
        use, and pymemcache discards it. With ``retry`` (commands that may safely run twice) the call is
        made again, as long as idle connections of the pool remain to be found stale, then once on a
        fresh one, before the error is raised. A server that refuses connections fails at once."""
        pool = self.pool(server)
        attempts = len(pool.client_pool.free) + 1 if retry else 0
        while True:
            try:
                return call(pool)
            except MachineryError:
                raise
            except Exception as exc:
                if attempts > 0 and isinstance(exc, _STALE):
                    attempts -= 1
                    continue
                raise _translate(exc, f"memcache {server}: {operation} failed") from None

    def check_size(self, key: bytes, value: bytes, what: str) -> None:
        """Refuse ``value`` before sending when it cannot fit in one item."""
        limit = self.settings.max_item_size
        if len(key) + len(value) + ITEM_OVERHEAD > limit:
            raise ValueTooLargeError(
                f"{what} is {len(value)} bytes: over memcached's item size limit of {limit} bytes "
                f"(max_item_size, the server's -I); store large results elsewhere and return a reference"
            )

    # commands --------------------------------------------------------------------------------
    def get(self, operation: str, key: bytes) -> bytes | None:
        value: bytes | None = self.run(operation, self.server_for(key), lambda p: p.get(key))
        return value

    def gets(self, operation: str, key: bytes) -> tuple[bytes | None, bytes | None]:
        value, cas = self.run(operation, self.server_for(key), lambda p: p.gets(key))
        return value, cas

    def get_many(self, operation: str, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        """The values found (one round trip per server holding some of ``keys``)."""
        found: dict[bytes, bytes] = {}
        for server, owned in self.by_server(dict.fromkeys(keys)).items():
            found.update(self.run(operation, server, _get_many(owned)))
        return found

    def set(self, operation: str, key: bytes, value: bytes, expire: int) -> None:
        stored = self.run(operation, self.server_for(key), lambda p: p.set(key, value, expire=expire))
        if not stored:
            raise BackendError(f"memcache {self.server_for(key)}: {operation}: the server did not store it")

    def set_many(self, operation: str, values: Mapping[bytes, bytes], expire: int) -> None:
        """Store every item (one round trip per server)."""
        for server, owned in self.by_server(values).items():
            failed = self.run(operation, server, _set_many({k: values[k] for k in owned}, expire))
            if failed:
                raise BackendError(f"memcache {server}: {operation}: {len(failed)} items were not stored")

    def add(self, operation: str, key: bytes, value: bytes, expire: int) -> bool:
        """Store only if the key is absent; True when stored."""
        # not retried here: after a lost reply the key exists either way, and False would be a lie
        server = self.server_for(key)
        return bool(self.run(operation, server, lambda p: p.add(key, value, expire=expire), retry=False))

    def cas(self, operation: str, key: bytes, value: bytes, cas: bytes, expire: int) -> bool | None:
        """Replace if unchanged since ``gets``: True stored, False changed meanwhile, None gone."""
        result: bool | None = self.run(
            operation, self.server_for(key), lambda p: p.cas(key, value, cas, expire=expire), retry=False
        )
        return result

    def delete(self, operation: str, key: bytes) -> None:
        self.run(operation, self.server_for(key), lambda p: p.delete(key))

    def touch(self, key: bytes, expire: int) -> None:
        """Push ``key``'s expiry forward without waiting for the reply (best effort)."""
        self.run("refreshing an expiry", self.server_for(key), lambda p: p.touch(key, expire, noreply=True))

    def close(self) -> None:
        """Close every connection. Idempotent; a later command reconnects."""
        with self._lock:
            pools, self._pools = self._pools, {}
            inherited = self._pid != os.getpid()
        if inherited:
            return
        for pool in pools.values():
            pool.close()


def _get_many(keys: list[bytes]) -> Callable[[Any], dict[bytes, bytes]]:
    return lambda pool: dict(pool.get_many(keys))


def _set_many(values: dict[bytes, bytes], expire: int) -> Callable[[Any], list[bytes]]:
    return lambda pool: list(pool.set_many(values, expire=expire))
