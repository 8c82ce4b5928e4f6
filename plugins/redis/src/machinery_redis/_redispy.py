"""Every use of redis-py's internals by this package, in one place, checked against the installed redis-py.

Why internals at all (measurements in bench/README.md and README "Performance"):

- **Raw pipelines** (``Connection.send_packed_command`` / ``read_response``, commands packed by
  ``hiredis.pack_command``): a batch of commands (publish + PENDING states, acks + fetch) goes out as one
  buffer and its replies are read in order, error replies kept per command. redis-py's ``Pipeline`` costs
  several µs more per command in Python (hiredis packing alone saves 2-3 µs per command), and the worker
  spends ~100 µs of CPU per task in total, so the public pipeline would cost a measurable share.
- **Replies straight from the hiredis reader** (``_HiredisParser._reader``, ``NOT_ENOUGH_DATA``): the
  replies already received are taken with ``Reader.gets()`` (0.15 µs each against 0.68 through
  ``read_response``: a batch of 1,000 PENDING states has 1,000 replies); ``read_response`` still reads
  whenever more bytes are needed, so its timeouts, disconnects and health-check bookkeeping stay redis-py's.
- **Redis Cluster routing** (``RedisCluster.nodes_manager``, the client's ``encoder``): a batch spanning
  many slots is sent to each node in one round trip, in parallel; redis-py's cluster pipeline sends
  command by command per node and cannot carry EVALSHA replies as values.
- **Scripts on connect** (``redis_connect_func``, ``Connection.on_connect``): every Lua script is loaded on
  each new connection in the same round trip as the handshake, so a pipeline never meets NOSCRIPT after a
  restart or failover.
- **Retries** (``Retry.call_with_retry``, the contract between redis-py's connections and their retry
  policy, and its ``_supported_errors``): our loop never retries a refused password or certificate, rides
  out a restart for the retry window with our back-off, and reports an outage once. redis-py 8 changed
  that contract (``is_retryable``, ``with_failure_count``), which is why it is checked below.
- **Held connections** (``ConnectionPool.get_connection`` / ``release``, ``Connection.disconnect``): the
  hot path keeps the connections it took from a pool and hands them from one round trip to the next
  (:class:`HeldConnections`). redis-py's checkout and release (pid checks, health probing of the socket,
  connection events, observability hooks) cost about 25 µs of CPU per round trip, as much as the
  socket calls themselves.
- **Sentinel failovers** (the pool's ``proxy``, a ``SentinelConnectionPoolProxy``): its class is swapped
  for a subclass that reports each master address it resolves, the only place redis-py exposes it; a change
  is a failover (see client.py).

:func:`problems` lists what the installed redis-py lacks; the test suite asserts it is empty
(``tests/test_redispy_compat.py``), and importing this module logs one WARNING when it is not, so an
incompatible redis-py is named at once instead of failing deep inside a pipeline.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
from hiredis import pack_command
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _HiredisParser
from redis.backoff import NoBackoff
from redis.cluster import NodesManager, RedisCluster
from redis.connection import AbstractConnection, ConnectionPool
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelConnectionPoolProxy

__all__ = [
    "BorrowedConnections",
    "HeldConnections",
    "RetryLoop",
    "load_scripts",
    "node_for_slot",
    "problems",
    "read_replies",
    "refresh_slots",
    "report_master_addresses",
    "send_commands",
    "slot_of",
]

logger = logging.getLogger("machinery.redis")


def send_commands(conn: Any, commands: Sequence[tuple[Any, ...]]) -> None:
    """Write ``commands`` on connection ``conn`` as one buffer (packed by hiredis: our values are str,
    bytes, int and float only). Read the replies with :func:`read_reply`, one per command, in order."""
    conn.send_packed_command([b"".join([pack_command(command) for command in commands])])


def read_reply(conn: Any) -> Any:
    """The next reply on ``conn``; an error reply is returned as the exception, not raised."""
    try:
        return conn.read_response()
    except ResponseError as exc:
        return exc


def read_replies(conn: Any, count: int) -> list[Any]:
    """The next ``count`` replies on ``conn``, error replies as exception objects, as :func:`read_reply`
    would return them one by one.

    The first goes through ``read_response``, which reads from the socket (and returns a reply redis-py
    5.3's ``can_read`` may have kept aside); the rest are taken from the hiredis reader's buffer while it
    holds complete replies, and through ``read_response`` again whenever it needs more bytes. What
    redis-py's parser does with a reply is done the same way: a RESP3 push message (redis-py 8's default
    protocol) goes to the parser's push handler and is not counted; a connection error in a reply (such
    as LOADING) is raised. A connection on another parser, or on RESP3 without hiredis's push type
    (hiredis < 3.2), reads every reply through ``read_response``."""
    if count <= 0:
        return []
    replies = [read_reply(conn)]
    parser = conn._parser
    push = getattr(parser, "_hiredis_PushNotificationType", None)
    if (
        count < 4  # a send_task's two replies: the set-up below would cost what it saves
        or type(parser) is not _HiredisParser
        or (push is None and conn.protocol in (3, "3"))
    ):
        replies.extend(read_reply(conn) for _ in range(count - 1))
        return replies
    gets = parser._reader.gets
    handle_push: Any = None if push is None else parser.handle_push_response  # redis-py 5.3 has neither
    while len(replies) < count:
        reply = gets()
        if reply is NOT_ENOUGH_DATA:
            reply = read_reply(conn)
        elif push is not None and isinstance(reply, push):
            handle_push(reply)
            continue
        elif isinstance(reply, RedisConnectionError) or (
            type(reply) is list and reply and isinstance(reply[0], RedisConnectionError)
        ):
            raise reply if isinstance(reply, RedisConnectionError) else reply[0]
        replies.append(reply)
    return replies


class BorrowedConnections:
    """A pool used as redis-py uses it: a connection taken for each round trip and given back after it
    (a user-supplied client's pool, which this package must not hold on to). :class:`HeldConnections`
    has the same calls."""

    __slots__ = ("pool",)

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def take(self, epoch: int = 0) -> Any:
        return self.pool.get_connection()

    def keep(self, conn: Any) -> None:
        self.pool.release(conn)

    def drop(self, conn: Any) -> None:
        """``conn`` failed mid-round (replies may be left unread): disconnect it, give it back."""
        conn.disconnect()
        self.pool.release(conn)


class HeldConnections(BorrowedConnections):
    """Connections taken from one redis-py pool and kept between round trips (a LIFO of idle ones).

    The pool counts them as in use, so ``pool.disconnect()`` (closing) still closes them. A connection
    that failed is disconnected and given back to the pool, never kept. After a fork the child starts
    with none (the parent's sockets are not shared); after a Sentinel failover (``epoch`` grew) the
    idle ones are given back to the pool disconnected, as redis-py does with its own idle connections.
    """

    __slots__ = ("_epoch", "_idle", "_lock", "_pid")

    def __init__(self, pool: Any, epoch: int = 0) -> None:
        super().__init__(pool)
        self._idle: list[Any] = []
        self._pid = os.getpid()
        self._epoch = epoch
        self._lock = threading.Lock()

    def take(self, epoch: int = 0) -> Any:
        """An idle held connection, or a new one from the pool."""
        if self._pid != os.getpid() or self._epoch != epoch:
            self._forget(epoch)
        try:
            return self._idle.pop()  # atomic: no lock on the hot path
        except IndexError:
            return self.pool.get_connection()

    def keep(self, conn: Any) -> None:
        """``conn`` finished a round trip cleanly: keep it for the next one."""
        self._idle.append(conn)

    def _forget(self, epoch: int) -> None:
        with self._lock:
            inherited = self._pid != os.getpid()
            idle, self._idle = self._idle, []
            self._pid, self._epoch = os.getpid(), epoch
        if inherited:
            return  # the parent's connections: never touch them here
        for conn in idle:
            self.drop(conn)


def load_scripts(connection: Any, sources: Sequence[str], *, handshake: bool) -> None:
    """Load every script on a new connection in one round trip (after redis-py's own handshake when
    ``handshake``: a ``redis_connect_func`` replaces it; RedisCluster does the handshake itself)."""
    if handshake:
        check = getattr(connection, "on_connect_check_health", None)  # redis-py 6+
        if check is not None:
            # No health-check PING inside the handshake of a fresh connection: when the server drops it
            # at once (a TLS server refusing a missing client certificate), that PING reconnected, which
            # ran this handshake again, without end (RecursionError under redis-py 8).
            check(check_health=False)
        else:
            connection.on_connect()
    commands = [("SCRIPT", "LOAD", source) for source in sources]
    if commands:
        connection.send_packed_command(connection.pack_commands(commands), check_health=False)
        for _ in commands:
            connection.read_response()


def slot_of(client: Any, key: Any) -> int:
    """The cluster slot of ``key``, encoded the way ``client`` encodes keys."""
    return int(key_slot(client.encoder.encode(key)))


def node_for_slot(client: RedisCluster, slot: int) -> Any:
    """The primary node serving ``slot`` in ``client``'s slot map."""
    return client.nodes_manager.get_node_from_slot(slot)


def refresh_slots(client: RedisCluster) -> None:
    """Read the cluster's slot map again (after MOVED, or once a restarted cluster answers)."""
    client.nodes_manager.initialize()


class RetryLoop(Retry):
    """redis-py's ``Retry`` with our loop: ``permanent(error)`` errors are raised at once; otherwise, after
    redis-py's failure handler ran, ``on_error(error, failures)`` returns the seconds to wait before the
    next try, or None to raise; ``on_success()`` follows each success."""

    def __init__(
        self,
        retries: int,
        *,
        permanent: Callable[[Exception], bool],
        on_error: Callable[[Exception, int], float | None],
        on_success: Callable[[], None],
    ) -> None:
        super().__init__(NoBackoff(), retries)
        self._machinery = (retries, permanent, on_error, on_success)

    def __deepcopy__(self, memo: dict[int, Any]) -> RetryLoop:
        # redis-py copies the retry policy into each connection; the callbacks (the outage log) stay shared
        retries, permanent, on_error, on_success = self._machinery
        return RetryLoop(retries, permanent=permanent, on_error=on_error, on_success=on_success)

    def call_with_retry(
        self,
        do: Callable[[], Any],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> Any:
        # is_retryable and with_failure_count: redis-py 8 passes them (the handler of a failed health-check
        # PING takes the failure count); 5.3 passes neither.
        _, permanent, on_error, on_success = self._machinery
        failures = 0
        while True:
            try:
                result = do()
                on_success()
                return result
            except self._supported_errors as error:
                if permanent(error) or (is_retryable is not None and not is_retryable(error)):
                    raise
                failures += 1
                if with_failure_count:
                    fail(error, failures)
                else:
                    fail(error)
                wait = on_error(error, failures)
                if wait is None:
                    raise error
                time.sleep(wait)


class _ReportingProxy(SentinelConnectionPoolProxy):
    """redis-py's Sentinel pool proxy (what each new connection asks for the master's address) that
    reports every address it gets."""

    machinery_on_address: Callable[[Any], None] | None = None

    def get_master_address(self) -> Any:
        address = super().get_master_address()  # type: ignore[no-untyped-call]
        if self.machinery_on_address is not None:
            self.machinery_on_address(address)
        return address


def report_master_addresses(client: redis.Redis, on_address: Callable[[Any], None]) -> None:
    """Call ``on_address(address)`` each time ``client``'s Sentinel pool resolves the master."""
    proxy = client.connection_pool.proxy  # type: ignore[attr-defined]
    proxy.__class__ = _ReportingProxy
    proxy.machinery_on_address = on_address


# -- the compatibility check ---------------------------------------------------------------------------
_SEND_PARAMS = ("command", "check_health")
#: what RetryLoop.call_with_retry accepts (redis-py 5.3 passes do and fail, 8 the last two too)
_RETRY_PARAMS = ("self", "do", "fail", "is_retryable", "with_failure_count")
#: (what, object, attribute, parameters it must accept): redis-py internals this module relies on
_METHODS: tuple[tuple[str, Any, str, tuple[str, ...]], ...] = (
    (
        "Connection.send_packed_command",
        AbstractConnection,
        "send_packed_command",
        ("command", "check_health"),
    ),
    ("Connection.pack_commands", AbstractConnection, "pack_commands", ("commands",)),
    ("Connection.read_response", AbstractConnection, "read_response", ()),
    ("Connection.on_connect", AbstractConnection, "on_connect", ()),
    ("Connection.disconnect", AbstractConnection, "disconnect", ()),
    ("ConnectionPool.get_connection", ConnectionPool, "get_connection", ()),
    ("ConnectionPool.release", ConnectionPool, "release", ("connection",)),
    ("NodesManager.get_node_from_slot", NodesManager, "get_node_from_slot", ("slot",)),
    ("NodesManager.initialize", NodesManager, "initialize", ()),
    ("SentinelConnectionPoolProxy.get_master_address", SentinelConnectionPoolProxy, "get_master_address", ()),
    ("RedisCluster.get_redis_connection", RedisCluster, "get_redis_connection", ("node",)),
)


def problems() -> list[str]:
    """What the installed redis-py lacks of the internals above (empty when compatible)."""
    found: list[str] = []
    for what, owner, name, params in _METHODS:
        method = getattr(owner, name, None)
        if not callable(method):
            found.append(f"{what} is missing")
            continue
        try:
            accepted = inspect.signature(method).parameters
        except (TypeError, ValueError):  # pragma: no cover - a C function without a signature
            continue
        missing = [p for p in params if p not in accepted]
        if missing:
            found.append(f"{what} no longer takes {', '.join(missing)}")
    unknown = set(inspect.signature(Retry.call_with_retry).parameters) - set(_RETRY_PARAMS)
    if unknown:
        found.append(f"Retry.call_with_retry takes {', '.join(sorted(unknown))}, which RetryLoop does not")
    if not isinstance(getattr(Retry(NoBackoff(), 0), "_supported_errors", None), tuple):
        found.append("Retry no longer keeps _supported_errors")
    try:
        source = inspect.getsource(_HiredisParser.on_connect)
        if "notEnoughData" not in source or "self._reader" not in source:
            found.append("_HiredisParser no longer keeps a hiredis Reader built with notEnoughData")
        if "_hiredis_PushNotificationType" in source and not callable(
            getattr(_HiredisParser, "handle_push_response", None)
        ):
            found.append("_HiredisParser reads RESP3 pushes but has no handle_push_response")
    except OSError:  # pragma: no cover - installed without sources
        pass
    if "redis_connect_func" not in inspect.signature(AbstractConnection.__init__).parameters:
        found.append("Connection no longer takes redis_connect_func")
    try:
        if "self.nodes_manager" not in inspect.getsource(RedisCluster.__init__):
            found.append("RedisCluster no longer keeps a nodes_manager")
    except OSError:  # pragma: no cover - installed without sources
        pass
    try:
        pool = SentinelConnectionPool("machinery-check", Sentinel([]))  # type: ignore[no-untyped-call]
        if not isinstance(getattr(pool, "proxy", None), SentinelConnectionPoolProxy):
            found.append("SentinelConnectionPool no longer has a proxy (SentinelConnectionPoolProxy)")
    except Exception as exc:  # pragma: no cover - a redis-py that builds pools differently
        found.append(f"SentinelConnectionPool could not be built offline: {exc}")
    return found


def _check() -> None:
    found = problems()
    if found:
        logger.warning(
            "machinery-redis relies on redis-py internals that redis-py %s changed: %s. Install a redis-py "
            "version machinery-redis supports (see its pyproject.toml) or upgrade machinery-redis.",
            redis.__version__,
            "; ".join(found),
        )


_check()
