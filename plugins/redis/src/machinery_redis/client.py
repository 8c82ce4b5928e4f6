"""Building redis-py clients from a URL and ``Config.redis``, and turning their errors into ours.

Machinery's ``RedisConfig`` fields map onto redis-py as follows (see README.md):

- ``read_timeout`` / ``write_timeout`` → ``socket_timeout`` (redis-py has one timeout for both: the larger
  is used; 0 means none); ``connect_timeout`` → ``socket_connect_timeout``.
- ``max_active`` → the pool's ``max_connections`` (0 = unlimited); ``wait`` → a ``BlockingConnectionPool``
  that waits up to ``connect_timeout`` for a free connection instead of failing.
- ``idle_timeout`` → ``health_check_interval``: a connection idle longer than that is checked with PING
  before use, so a connection the server or a firewall dropped is replaced rather than failing a command.
- ``max_idle`` has no redis-py equivalent (the pool keeps what it opened); it is accepted and ignored.
- ``client_name`` → ``CLIENT SETNAME`` on connect.

Topologies: one server (TCP, TLS or a unix socket), Sentinel (redis-py's ``Sentinel.master_for``: each
new connection asks the sentinels for the master) and Redis Cluster (redis-py's ``RedisCluster``, which
follows MOVED/ASK redirections; :meth:`Connection.run` routes a batch itself, one round trip per node).

Each :class:`Connection` has two clients on separate pools: ``client`` retries connection errors with
back-off for up to ``retry_window`` seconds (15 by default: a server restart, a Sentinel failover), and
``blocking`` never retries (used for BLMOVE: a retried move could leave a message behind in a processing
list).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    AuthenticationError,
    BusyLoadingError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedSSLConnection

from machinery.backoff import delay
from machinery.config import Config, warn_insecure_tls
from machinery.errors import ConfigError, MachineryError, PermanentError
from machinery.forking import at_fork

from . import _redispy
from .settings import RedisSettings
from .url import RedisTarget, parse_bool

__all__ = ["Connection", "RedisClient", "Script", "outage_errors"]

#: redis-py's command methods are typed loosely (sync/async unions), so clients are handled as Any.
RedisClient = Any

logger = logging.getLogger("machinery.redis")

T = TypeVar("T")

#: Errors that mean "the server is not reachable right now" (worth a retry later). ``ClusterDownError``
#: and ``TryAgainError`` come from a cluster that is (re)starting or resharding.
outage_errors: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ClusterDownError,
    TryAgainError,
    ConnectionError,
    TimeoutError,
)

#: Retries before the server ever answered (a wrong address fails in well under a second).
FIRST_CONTACT_RETRIES = 2
#: Cluster redirections (MOVED/ASK/TRYAGAIN) followed for one command before giving up.
MAX_REDIRECTIONS = 16


def _permanent(exc: BaseException) -> bool:
    """Failures that a retry cannot fix: refused credentials, a TLS certificate that does not verify."""
    if isinstance(exc, AuthenticationError):
        return True
    text = str(exc)
    return "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text


def _cross_slot(text: str) -> bool:
    """A cluster's refusal (or redis-py's, before sending) of one command over keys in several slots."""
    return "CROSSSLOT" in text or "hash to the same slot" in text or "map to the same key slot" in text


def backoff(failures: int) -> float:
    """0.05 s doubling to 1 s, each wait between half of that and all of it."""
    return delay(max(1, failures), 0.05, 1.0, jitter=0.5)


class _Health:
    """Logs an outage once (WARNING), and once more when the server answers again (INFO); knows when to
    stop retrying."""

    def __init__(self, where: str, window: float) -> None:
        self.where = where
        self.window = window
        self.down_since: float | None = None
        #: the server answered at least once: before that, a connection error fails fast (a wrong
        #: address should not take the retry window to be reported)
        self.reached = False
        self._lock = threading.Lock()

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            if self.down_since is not None:
                return
            self.down_since = time.monotonic()
        logger.warning("Redis at %s is unreachable (%s); retrying with back-off", self.where, exc)

    def ok(self) -> None:
        with self._lock:
            since, self.down_since = self.down_since, None
        if since is not None:
            logger.info("Redis at %s answers again after %.1f s", self.where, time.monotonic() - since)

    def give_up(self, failures: int) -> bool:
        """Stop retrying after ``failures`` failed attempts of one call? Before the server ever answered,
        after a few quick tries; afterwards once the outage (shared by every call and thread, nested
        retries included) has lasted the retry window."""
        if not self.reached:
            return failures > FIRST_CONTACT_RETRIES
        since = self.down_since
        return since is not None and time.monotonic() - since >= self.window

    def succeeded(self) -> None:
        self.reached = True
        if self.down_since is not None:
            self.ok()


def _retry_policy(health: _Health, retrying: bool) -> Retry:
    """redis-py's retry policy for our pools (one server, Sentinel): never retries a wrong password or a
    TLS failure, retries for up to the connection's retry window, and reports the outage once."""

    def on_error(error: Exception, failures: int) -> float | None:
        if not retrying:
            return None
        health.failed(error)
        return None if health.give_up(failures) else backoff(failures)

    return _redispy.RetryLoop(
        1 if retrying else 0, permanent=_permanent, on_error=on_error, on_success=health.succeeded
    )


#: Every script, loaded on each new connection (so a pipeline never meets NOSCRIPT after a restart).
_SCRIPTS: list[Script] = []


class Script:
    """A Lua script run by EVALSHA. Loaded on each new connection of this plugin's pools, and again on
    NOSCRIPT (a user-supplied client's connections, or a ``SCRIPT FLUSH``)."""

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        _SCRIPTS.append(self)

    def command(self, keys: Sequence[Any], args: Sequence[Any] = ()) -> tuple[Any, ...]:
        """The EVALSHA command, for :meth:`Connection.run`."""
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    def __call__(self, client: RedisClient, keys: Sequence[Any], args: Sequence[Any] = ()) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)


def _load_scripts(connection: Any) -> None:
    """``redis_connect_func`` of our pools: the usual handshake, then every script in one round trip."""
    _redispy.load_scripts(connection, [script.source for script in _SCRIPTS], handshake=True)


def _timeout(value: float) -> float | None:
    return float(value) if value and value > 0 else None


# Sentinel --------------------------------------------------------------------------------------
class _Topology:
    """What this process knows of one Sentinel-managed master: its address, and an epoch that grows
    each time the address changes (a failover). Shared by every connection to that master.

    A watcher thread subscribes to the sentinels' ``+switch-master`` and, on a failover, closes every
    connection of our pools to that master, in use or not: redis-py would otherwise keep writing to the
    old master through the connections it already has until the sentinel demotes it (up to ~10 s
    later), and Redis drops those writes when the old master resyncs as a replica."""

    def __init__(self, hosts: Sequence[tuple[str, int]], master: str) -> None:
        self.hosts = list(hosts)
        self.master = master
        self.address: Any = None
        self.epoch = 0
        self._lock = threading.Lock()
        self._pools: weakref.WeakSet[Any] = weakref.WeakSet()
        self._watcher: threading.Thread | None = None
        self._sentinel_kwargs: dict[str, Any] = {}
        self._pid = os.getpid()

    def check_fork(self) -> None:
        """In a forked child the watcher thread is gone (and the lock may be held): start afresh."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._watcher = None
        if self._pools:
            self.watch(None, self._sentinel_kwargs)

    def observe(self, address: Any) -> bool:
        """Note the master's address; True when it moved (a failover: the epoch grows)."""
        address = (str(address[0]), int(address[1]))
        with self._lock:
            if address == self.address:
                return False
            old, self.address = self.address, address
            if old is None:
                return False
            self.epoch += 1
        logger.warning(
            "Redis Sentinel %s: the master moved from %s:%s to %s:%s (failover)", self.master, *old, *address
        )
        return True

    def watch(self, pool: Any, sentinel_kwargs: dict[str, Any]) -> None:
        """Close ``pool``'s connections on each failover (starts the watcher thread once)."""
        with self._lock:
            if pool is not None:
                self._pools.add(pool)
            self._sentinel_kwargs = sentinel_kwargs
            if self._watcher is not None and self._watcher.is_alive():
                return
            self._watcher = threading.Thread(
                target=self._watch, name=f"redis-sentinel-watch-{self.master}", daemon=True
            )
            self._watcher.start()

    def switched(self, address: Any) -> None:
        moved = self.observe(address)
        if not moved:
            return
        with self._lock:
            pools = list(self._pools)
        for pool in pools:
            try:
                pool.disconnect(inuse_connections=True)
            except Exception:  # pragma: no cover - best effort
                logger.debug("closing connections to the old master failed", exc_info=True)

    def _watch(self) -> None:
        failures = 0
        idle_since: float | None = None
        while True:
            with self._lock:
                alive = len(self._pools) > 0
                kwargs = dict(self._sentinel_kwargs)
            if not alive:  # every client of this master is gone: stop after a while
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 30:
                    with self._lock:
                        if not self._pools:  # (checked again: watch() may just have added one)
                            self._watcher = None
                            return
                time.sleep(1.0)
                continue
            idle_since = None
            host, port = self.hosts[failures % len(self.hosts)]
            kwargs["socket_timeout"] = None  # listening: the reads block
            try:
                client: Any = redis.Redis(host=host, port=port, **kwargs)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                try:
                    pubsub.subscribe("+switch-master")
                    failures = 0
                    while True:
                        with self._lock:
                            if not self._pools:
                                break
                        message = pubsub.get_message(timeout=5.0)
                        if message is None:
                            continue
                        data = message.get("data")
                        text = data.decode() if isinstance(data, bytes) else str(data)
                        # "<master name> <old ip> <old port> <new ip> <new port>"
                        fields = text.split()
                        if len(fields) == 5 and fields[0] == self.master:
                            self.switched((fields[3], int(fields[4])))
                finally:
                    pubsub.close()
                    client.close()
            except Exception as exc:
                failures += 1
                logger.debug("watching sentinel %s:%s failed: %s", host, port, exc)
                time.sleep(min(0.1 * failures, 2.0))


_TOPOLOGIES: dict[tuple[Any, ...], _Topology] = {}
_TOPOLOGIES_LOCK = threading.Lock()


def _topology(hosts: Sequence[tuple[str, int]], master: str) -> _Topology:
    key = (tuple(hosts), master)
    with _TOPOLOGIES_LOCK:
        topology = _TOPOLOGIES.get(key)
        if topology is None:
            topology = _TOPOLOGIES[key] = _Topology(hosts, master)
        return topology


def _forget_topologies() -> None:
    """In a forked child: the watcher threads are not there; start afresh."""
    global _TOPOLOGIES_LOCK
    _TOPOLOGIES_LOCK = threading.Lock()
    _TOPOLOGIES.clear()


at_fork(sys.modules[__name__], "_forget_topologies")


def _watch_failovers(client: Any, topology: _Topology, sentinel_kwargs: dict[str, Any]) -> None:
    # every master address a new connection resolves is reported: a change is a failover
    _redispy.report_master_addresses(client, topology.switched)
    topology.watch(client.connection_pool, sentinel_kwargs)


# Cluster ---------------------------------------------------------------------------------------
def _cluster_error(exc: RedisClusterException) -> RedisError:
    """redis-py raises RedisClusterException (not a RedisError) when no node answers or a slot is not
    covered: turn it into the RedisError it stands for."""
    cause = exc.__cause__
    if isinstance(cause, RedisError):
        return cause
    if isinstance(exc, SlotNotCoveredError) or "cannot be connected" in str(exc):
        return RedisConnectionError(str(exc))
    if "not covered" in str(exc):
        return ClusterDownError(str(exc))  # type: ignore[no-untyped-call, unused-ignore]  # untyped in redis-py 5.3
    return RedisError(str(exc))


def _load_scripts_only(connection: Any) -> None:
    """``redis_connect_func`` for RedisCluster (which does the handshake itself first)."""
    _redispy.load_scripts(connection, [script.source for script in _SCRIPTS], handshake=False)


class _Cluster(RedisCluster):
    """redis-py's RedisCluster whose commands raise RedisErrors only and, on the retrying client, are
    retried on connection errors with back-off for the retry window (redis-py's own cluster retries do
    not wait, so they cannot ride out a restart)."""

    def __init__(self, health: _Health, retrying: bool, **kwargs: Any) -> None:
        self._machinery_health = health
        self._machinery_retrying = retrying
        try:
            super().__init__(retry=Retry(NoBackoff(), 0), **kwargs)
        except RedisClusterException as exc:
            raise _cluster_error(exc) from None

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        health = self._machinery_health
        failures = 0
        while True:
            try:
                try:
                    result = super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]
                except RedisClusterException as exc:
                    raise _cluster_error(exc) from None
                health.succeeded()
                return result
            except outage_errors as error:
                if _permanent(error) or not self._machinery_retrying:
                    raise
                failures += 1
                health.failed(error)
                if health.give_up(failures):
                    raise
                time.sleep(backoff(failures))


def _command_key(command: tuple[Any, ...]) -> Any:
    """The key a command is routed by (every command this plugin batches names its key first)."""
    if command[0] in ("EVALSHA", "EVAL"):
        return command[3] if int(command[2]) > 0 else None
    return command[1] if len(command) > 1 else None


def _slot(client: Any, command: tuple[Any, ...]) -> int:
    key = _command_key(command)
    if key is None:
        return random.randrange(16384)
    return _redispy.slot_of(client, key)


def _cluster_round(client: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Send ``commands`` to their nodes (all writes first, then the reads: one round trip per node, in
    parallel), following MOVED/ASK/TRYAGAIN. Error replies come back as exception objects."""
    replies: list[Any] = [None] * len(commands)
    todo = list(range(len(commands)))
    asking: dict[int, Any] = {}
    for _ in range(MAX_REDIRECTIONS):
        groups: dict[str, tuple[Any, list[int]]] = {}
        for i in todo:
            node = asking.get(i)
            if node is None:
                node = _redispy.node_for_slot(client, _slot(client, commands[i]))
            groups.setdefault(node.name, (node, []))[1].append(i)
        taken: list[tuple[Any, Any, list[int], int]] = []
        clean = False
        try:
            for node, indexes in groups.values():
                pool = client.get_redis_connection(node).connection_pool
                conn = pool.get_connection()
                batch: list[tuple[Any, ...]] = []
                for i in indexes:
                    if i in asking:
                        batch.append(("ASKING",))
                    batch.append(commands[i])
                taken.append((pool, conn, indexes, len(batch)))
                _redispy.send_commands(conn, batch)
            for _pool, conn, indexes, sent in taken:
                got = iter(_redispy.read_replies(conn, sent))
                for i in indexes:
                    if i in asking:
                        next(got)  # ASKING's +OK
                    replies[i] = next(got)
            clean = True
        finally:
            for pool, conn, _indexes, _sent in taken:
                if not clean:
                    conn.disconnect()
                pool.release(conn)
        asking = {}
        again: list[int] = []
        refresh = False
        for i in todo:
            reply = replies[i]
            if isinstance(reply, MovedError):
                refresh = True
                again.append(i)
            elif isinstance(reply, AskError):
                node = client.get_node(host=reply.host, port=reply.port)
                if node is None:
                    refresh = True
                else:
                    asking[i] = node
                again.append(i)
            elif isinstance(reply, TryAgainError):
                again.append(i)
        if not again:
            return replies
        if refresh:
            _redispy.refresh_slots(client)
        elif not asking:
            time.sleep(0.05)  # TRYAGAIN: a slot is being migrated
        todo = again
    return replies


class Connection:
    """Lazily built clients for one target, shared by a broker, backend or lock.

    ``error_class`` is what failures are raised as (:class:`~machinery.errors.BrokerError`,
    :class:`~machinery.errors.BackendError`...), always with the URL redacted and never the password.
    """

    def __init__(self, target: RedisTarget, config: Config, error_class: type[MachineryError]) -> None:
        self.target = target
        self.config = config
        self.error_class = error_class
        window: Any = target.options.get("retry_window")
        if window is None:
            window = RedisSettings.of(config).retry_window
        self.retry_window = float(window)
        self.health = _Health(target.describe() or "a user-supplied client", self.retry_window)
        self._lock = threading.Lock()
        self._client: RedisClient | None = None
        self._blocking: RedisClient | None = None
        #: connections kept between round trips, per pool (``id(pool)``): see _redispy.HeldConnections
        self._held: dict[int, _redispy.HeldConnections] = {}
        self.user_client: Any = RedisSettings.of(config).client
        if self.user_client is not None and not isinstance(self.user_client, redis.Redis | RedisCluster):
            raise ConfigError(
                "Config.redis.client must be a redis.Redis or a redis.cluster.RedisCluster, got "
                f"{type(self.user_client).__name__}"
            )
        #: Sentinel master: from redis+sentinel://, or Machinery's Config.redis.master_name with the
        #: URL's hosts as the sentinels
        self.master_name = target.master_name or (
            RedisSettings.of(config).master_name if target.hosts else ""
        )
        #: Redis Cluster: Machinery's comma list of nodes, Config.redis.cluster_mode, or a RedisCluster
        #: passed in Config.redis.client
        if self.user_client is not None:
            self.cluster = isinstance(self.user_client, RedisCluster)
        else:
            self.cluster = not self.master_name and (
                target.cluster or bool(RedisSettings.of(config).cluster_mode)
            )
        if self.cluster and self.user_client is None:
            if target.socket_path:
                raise ConfigError(
                    f"Redis Cluster over a unix socket ({target.describe()}) is not possible: give the "
                    "nodes as redis://h1:7000,h2:7001/0"
                )
            if target.db != 0:
                raise ConfigError(
                    f"Redis Cluster has only database 0, got /{target.db} in {target.describe()}"
                )
        self.topology: _Topology | None = None
        if self.master_name and self.user_client is None:
            self.topology = _topology(self.target.hosts, self.master_name)

    @property
    def epoch(self) -> int:
        """Grows with each Sentinel failover this process noticed (0 without Sentinel)."""
        topology = self.topology
        if topology is None:
            return 0
        topology.check_fork()
        return topology.epoch

    # clients ---------------------------------------------------------------------------------
    @property
    def client(self) -> RedisClient:
        """The retrying client (built on first use; no I/O until a command is sent, except for Redis
        Cluster, whose client reads the slot map when built)."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._build(retrying=True)
                client = self._client
        return client

    @property
    def blocking(self) -> RedisClient:
        """The client for blocking commands: no retries (the caller handles failures)."""
        client = self._blocking
        if client is None:
            with self._lock:
                if self._blocking is None:
                    self._blocking = self._build(retrying=False)
                client = self._blocking
        return client

    def _kwargs(self, retrying: bool) -> dict[str, Any]:
        cfg = RedisSettings.of(self.config)
        target = self.target
        timeout = max(cfg.read_timeout or 0, cfg.write_timeout or 0)
        kwargs: dict[str, Any] = {
            "socket_timeout": _timeout(timeout),
            "socket_connect_timeout": _timeout(cfg.connect_timeout),
            "retry": _retry_policy(self.health, retrying),
            "redis_connect_func": _load_scripts,
            "health_check_interval": max(0, int(cfg.idle_timeout or 0)),
            "client_name": target.client_name or cfg.client_name or None,
            "username": target.username,
            "password": target.password,
            "db": target.db,
        }
        if target.socket_path:
            kwargs["connection_class"] = redis.UnixDomainSocketConnection
            kwargs["path"] = target.socket_path
        elif not self.master_name:
            kwargs["host"], kwargs["port"] = target.hosts[0]
        if target.tls:
            # a Sentinel pool needs its own connection class, which asks the sentinels for the address
            kwargs["connection_class"] = (
                SentinelManagedSSLConnection if self.master_name else redis.SSLConnection
            )
            kwargs.update(self._tls_kwargs())
        return kwargs

    def _tls_kwargs(self) -> dict[str, Any]:
        tls = self.config.tls
        out: dict[str, Any] = {}
        if tls.ca_file:
            out["ssl_ca_certs"] = tls.ca_file
        if tls.cert_file:
            out["ssl_certfile"] = tls.cert_file
        if tls.key_file:
            out["ssl_keyfile"] = tls.key_file
        # Always said explicitly: redis-py's default changed (5.x does not check the server's host
        # name, 6.0 and later do), and whether it is checked must not depend on the installed version.
        out["ssl_check_hostname"] = not tls.insecure_skip_verify
        if tls.insecure_skip_verify:
            out["ssl_cert_reqs"] = "none"
        params = dict(self.target.tls_params)
        if "ssl_check_hostname" in params:
            out["ssl_check_hostname"] = parse_bool(params.pop("ssl_check_hostname"), "ssl_check_hostname")
        out.update(params)
        if out.get("ssl_cert_reqs") in ("none", "CERT_NONE"):
            out["ssl_check_hostname"] = False
        if out.get("ssl_check_hostname") is False:
            warn_insecure_tls("redis")
        return out

    def _pool(self, kwargs: dict[str, Any]) -> redis.ConnectionPool:
        cfg = RedisSettings.of(self.config)
        max_active = cfg.max_active if cfg.max_active and cfg.max_active > 0 else None
        if cfg.wait and max_active:
            return redis.BlockingConnectionPool(  # type: ignore[no-untyped-call]
                max_connections=max_active, timeout=_timeout(cfg.connect_timeout), **kwargs
            )
        return redis.ConnectionPool(max_connections=max_active, **kwargs)

    def _build(self, retrying: bool) -> RedisClient:
        if self.user_client is not None:
            return self._derive(self.user_client, retrying)
        if self.cluster:
            return self._build_cluster(retrying)
        kwargs = self._kwargs(retrying)
        if self.master_name:
            sentinel_kwargs: dict[str, Any] = {
                "socket_timeout": kwargs["socket_timeout"],
                "socket_connect_timeout": kwargs["socket_connect_timeout"],
            }
            sentinel_password = RedisSettings.of(self.config).sentinel_password
            if sentinel_password:
                sentinel_kwargs["password"] = sentinel_password
            if self.target.tls:
                sentinel_kwargs["connection_class"] = redis.SSLConnection
                sentinel_kwargs.update(self._tls_kwargs())
            sentinel: Any = Sentinel(list(self.target.hosts), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call,unused-ignore]
            kwargs.pop("db")
            client = sentinel.master_for(self.master_name, db=self.target.db, **kwargs)
            assert self.topology is not None
            _watch_failovers(client, self.topology, sentinel_kwargs)
            return client
        return redis.Redis(connection_pool=self._pool(kwargs))

    def _build_cluster(self, retrying: bool) -> RedisClient:
        cfg = RedisSettings.of(self.config)
        target = self.target
        timeout = max(cfg.read_timeout or 0, cfg.write_timeout or 0)
        kwargs: dict[str, Any] = {
            "startup_nodes": [ClusterNode(host, port) for host, port in target.hosts],  # type: ignore[no-untyped-call]
            "socket_timeout": _timeout(timeout),
            "socket_connect_timeout": _timeout(cfg.connect_timeout),
            "redis_connect_func": _load_scripts_only,
            "client_name": target.client_name or cfg.client_name or None,
            "username": target.username,
            "password": target.password,
        }
        max_active = cfg.max_active if cfg.max_active and cfg.max_active > 0 else None
        if max_active:
            kwargs["max_connections"] = max_active
            if cfg.wait:
                kwargs["connection_pool_class"] = redis.BlockingConnectionPool
                kwargs["timeout"] = _timeout(cfg.connect_timeout)
        if target.tls:
            kwargs["ssl"] = True
            kwargs["connection_class"] = redis.SSLConnection
            kwargs.update(self._tls_kwargs())
        failures = 0
        while True:
            try:
                # redis-py 5.3's type hints make connection_pool abstract (8.x's do not)
                client = _Cluster(self.health, retrying, **kwargs)  # type: ignore[abstract, unused-ignore]
                self.health.succeeded()
                return client
            except outage_errors as error:
                if _permanent(error) or not retrying:
                    raise
                failures += 1
                self.health.failed(error)
                if self.health.give_up(failures):
                    raise
                time.sleep(backoff(failures))

    def _derive(self, user: Any, retrying: bool) -> RedisClient:
        """The user's client as is, or (for blocking commands) a twin on its own pool without retries."""
        if retrying or isinstance(user, RedisCluster):
            return user
        pool = user.connection_pool
        if type(pool) is not redis.ConnectionPool:
            return user  # a sentinel or blocking pool: use it as it is
        kwargs = dict(pool.connection_kwargs)
        kwargs["retry"] = _retry_policy(self.health, False)
        kwargs["redis_connect_func"] = _load_scripts
        return redis.Redis(
            connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
        )

    def max_block(self, seconds: float) -> float:
        """``seconds`` capped so that a blocking command returns before the socket timeout fires."""
        cfg = RedisSettings.of(self.config)
        timeout = max(cfg.read_timeout or 0, cfg.write_timeout or 0)
        if timeout > 0:
            seconds = min(seconds, max(0.05, timeout * 0.8, timeout - 1.0))
        return round(max(seconds, 0.001), 3)

    # errors ----------------------------------------------------------------------------------
    def error(self, operation: str, exc: BaseException) -> MachineryError:
        """``exc`` as this connection's error class, naming the operation and the redacted URL."""
        if isinstance(exc, RedisClusterException):
            exc = _cluster_error(exc)
        where = self.target.describe() or "the user-supplied Redis client"
        text = str(exc) or type(exc).__name__
        error_class: type[MachineryError] = self.error_class
        password = self.target.password
        if password:
            text = text.replace(password, "***")
        if isinstance(exc, AuthenticationError) or (
            isinstance(exc, ResponseError) and ("WRONGPASS" in text or "NOAUTH" in text or "NOPERM" in text)
        ):
            message = (
                f"Redis at {where} refused the credentials during {operation}: {text} "
                "(check the user and password in the URL)"
            )
        elif _permanent(exc):
            hint = (
                "the URL's host must be a name or address in the server's certificate"
                if "mismatch" in text
                else "check Config.tls ca_file / cert_file / key_file or the ssl_* URL parameters"
            )
            message = f"TLS with Redis at {where} failed during {operation}: {text} ({hint})"
        elif isinstance(exc, outage_errors):
            self.health.failed(exc)
            message = f"Redis at {where} is unreachable during {operation}: {text}"
        elif _cross_slot(text):
            # the keys of one command are in different cluster slots: it fails the same way every time
            error_class = PermanentError
            message = f"Redis Cluster at {where}: {operation} failed: {text}"
        else:
            message = f"Redis at {where}: {operation} failed: {text}"
        err = error_class(message)
        err.__cause__ = None
        return err

    def call(self, operation: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` translating redis errors (the slow path helper; hot paths inline this)."""
        try:
            result = fn()
        except (RedisError, RedisClusterException) as exc:
            raise self.error(operation, exc) from None
        if self.health.down_since is not None:
            self.health.ok()
        return result

    def run(self, commands: Sequence[tuple[Any, ...]], *, blocking: bool = False) -> list[Any]:
        """Send ``commands`` in one round trip (per node, on a cluster) and return their raw replies,
        error replies as exception objects (the caller decides). Skips redis-py's pipeline machinery:
        this is the hot path.

        The server runs the commands in order on one server, and on a cluster the commands of one node
        (one slot, one node: a key and its ``{key}`` tagged keys). Commands on different nodes of a
        cluster are **not** ordered: a caller that needs a write applied before another node's is sent
        makes two calls.

        The retrying client retries connection errors with back-off (the commands must be safe to send
        twice); ``blocking=True`` uses the client without retries (for BLMOVE) and raises at once.
        Raises redis-py's exceptions (RedisErrors only); callers translate them with :meth:`error`.
        """
        return self._run(commands, blocking, None)

    def run_streamed(self, chunks: Iterable[Sequence[tuple[Any, ...]]]) -> list[Any]:
        """:meth:`run` for a batch still being built: each chunk of commands is sent as soon as it is
        built, so the server executes the first chunks while the caller builds the next (a batch's
        wall time is then the client's work and the server's side by side rather than one after the
        other); the replies of all the chunks are read at the end, in order.

        The chunks are built once. When the connection fails, the remaining chunks are built and the
        whole batch goes through :meth:`run`'s retries (safe to send twice, as there). An exception
        raised while building a chunk is raised as is, and the chunks sent before it stay sent: order
        the chunks so that this is harmless (PENDING states before the messages). On a cluster the
        chunks are built first and routed by :meth:`run` (whose order across nodes is not kept).
        """
        if self.cluster:
            return self.run([command for chunk in chunks for command in chunk])
        built: list[tuple[Any, ...]] = []
        return self._run(built, False, (built, iter(chunks)))

    def _run(
        self,
        commands: Sequence[tuple[Any, ...]],
        blocking: bool,
        stream: tuple[list[tuple[Any, ...]], Iterator[Sequence[tuple[Any, ...]]]] | None,
    ) -> list[Any]:
        """:meth:`run`; with ``stream`` (``commands``, still empty, and the chunks to build), the first
        round appends each chunk to ``commands`` as it sends it."""
        failures = 0
        while True:
            try:
                try:
                    client = self.blocking if blocking else self.client
                    if self.cluster:
                        replies = _cluster_round(client, commands)
                    else:
                        replies = self._round(client, commands, stream)
                except RedisClusterException as exc:
                    raise _cluster_error(exc) from None
            except outage_errors as exc:
                if _permanent(exc) or blocking:
                    raise
                if stream is not None:  # the rest of the batch is built, then the batch sent whole again
                    built, more = stream
                    built.extend(command for chunk in more for command in chunk)
                    stream = None
                failures += 1
                self.health.failed(exc)
                if self.health.give_up(failures):
                    raise
                time.sleep(backoff(failures))
                if self.cluster and self._client is not None:
                    try:
                        _redispy.refresh_slots(self._client)
                    except Exception:  # still down: the next round fails and backs off again
                        logger.debug("refreshing the cluster's slot map failed", exc_info=True)
                continue
            break
        self.health.succeeded()
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # a user-supplied client's connection, or SCRIPT FLUSH: load and send those again
            for script in _SCRIPTS:
                client.script_load(script.source)
            again = self.run([commands[i] for i in missing], blocking=blocking)
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    def _round(
        self,
        client: RedisClient,
        commands: Sequence[tuple[Any, ...]],
        stream: tuple[list[tuple[Any, ...]], Iterator[Sequence[tuple[Any, ...]]]] | None = None,
    ) -> list[Any]:
        connections = self._connections_of(client)
        conn = connections.take(self.epoch)
        try:
            replies = self._exchange(conn, commands, stream)
        except BaseException:
            connections.drop(conn)  # replies may be left unread on it
            raise
        connections.keep(conn)
        return replies

    @staticmethod
    def _exchange(
        conn: Any,
        commands: Sequence[tuple[Any, ...]],
        stream: tuple[list[tuple[Any, ...]], Iterator[Sequence[tuple[Any, ...]]]] | None,
    ) -> list[Any]:
        """Send the round on ``conn`` and read its replies: ``commands`` in one buffer, or with
        ``stream`` (the list collecting the commands, the chunks) each chunk as it is built."""
        if stream is None:
            _redispy.send_commands(conn, commands)
            return _redispy.read_replies(conn, len(commands))
        built, chunks = stream
        for chunk in chunks:
            built.extend(chunk)
            _redispy.send_commands(conn, chunk)
        return _redispy.read_replies(conn, len(built))

    def _connections_of(self, client: RedisClient) -> _redispy.BorrowedConnections:
        """Where ``client``'s round trips get their connection: the user's pool as redis-py uses it, or
        the connections this package keeps for its own pools (one set per pool)."""
        pool = client.connection_pool
        if client is self.user_client:
            return _redispy.BorrowedConnections(pool)
        held = self._held.get(id(pool))
        if held is None or held.pool is not pool:
            with self._lock:
                held = self._held.get(id(pool))
                if held is None or held.pool is not pool:
                    held = self._held[id(pool)] = _redispy.HeldConnections(pool, self.epoch)
        return held

    def close(self) -> None:
        """Disconnect the pools this connection built (a user-supplied client is left open)."""
        with self._lock:
            clients = [c for c in (self._client, self._blocking) if c is not None]
            self._client = self._blocking = None
            self._held = {}
        for client in clients:
            if client is self.user_client:
                continue
            try:
                if isinstance(client, RedisCluster):
                    client.close()
                else:
                    client.connection_pool.disconnect()
            except Exception:  # pragma: no cover - closing must not raise
                logger.debug("closing a Redis pool failed", exc_info=True)
