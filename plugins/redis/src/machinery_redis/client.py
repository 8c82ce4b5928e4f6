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

Each :class:`Connection` has two clients on separate pools: ``client`` retries connection errors with
jittered exponential back-off (about 5 s in all, enough for a server restart), and ``blocking`` never
retries (used for BLMOVE: a retried move could leave a message behind in a processing list).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoScriptError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from machinery.config import Config
from machinery.errors import ConfigError, MachineryError

from .url import RedisTarget

__all__ = ["Connection", "RedisClient", "Script", "outage_errors"]

#: redis-py's command methods are typed loosely (sync/async unions), so clients are handled as Any.
RedisClient = Any

logger = logging.getLogger("machinery.redis")

T = TypeVar("T")

#: Errors that mean "the server is not reachable right now" (worth a retry later).
outage_errors: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ConnectionError,
    TimeoutError,
)

#: Retries of the retrying client: 0.05 s doubling to 1 s, jittered: about 5 s in all.
RETRIES = 8
#: Retries before the server ever answered (a wrong address fails in well under a second).
FIRST_CONTACT_RETRIES = 2


def _permanent(exc: BaseException) -> bool:
    """Failures that a retry cannot fix: refused credentials, a TLS certificate that does not verify."""
    if isinstance(exc, AuthenticationError):
        return True
    text = str(exc)
    return "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text


class _Health:
    """Logs an outage once (WARNING), and once more when the server answers again (INFO)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.down_since: float | None = None
        #: the server answered at least once: before that, a connection error fails fast (a wrong
        #: address should not take the retry budget to be reported)
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


class _Retry(Retry):
    """redis-py's Retry that never retries a wrong password and reports the outage once."""

    def __init__(self, health: _Health, retries: int) -> None:
        backoff = ExponentialWithJitterBackoff(cap=1.0, base=0.05) if retries else NoBackoff()
        super().__init__(backoff, retries)
        self._health = health

    def __deepcopy__(self, memo: dict[int, Any]) -> _Retry:
        # redis-py copies the retry policy into each connection; the outage log stays shared.
        return _Retry(self._health, self._retries)

    def call_with_retry(self, do: Callable[[], T], fail: Callable[..., Any], *args: Any, **kwargs: Any) -> T:
        self._backoff.reset()  # type: ignore[no-untyped-call]
        failures = 0
        while True:
            try:
                result = do()
                self._health.reached = True
                return result
            except self._supported_errors as error:
                if _permanent(error):
                    raise
                failures += 1
                fail(error)
                if failures > (
                    self._retries if self._health.reached else min(self._retries, FIRST_CONTACT_RETRIES)
                ):
                    raise error
                self._health.failed(error)
                time.sleep(self._backoff.compute(failures))


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
    connection.on_connect()
    commands = [("SCRIPT", "LOAD", script.source) for script in _SCRIPTS]
    if commands:
        connection.send_packed_command(connection.pack_commands(commands), check_health=False)
        for _ in commands:
            connection.read_response()


def _timeout(value: float) -> float | None:
    return float(value) if value and value > 0 else None


class Connection:
    """Lazily built clients for one target, shared by a broker, backend or lock.

    ``error_class`` is what failures are raised as (:class:`~machinery.errors.BrokerError`,
    :class:`~machinery.errors.BackendError`...), always with the URL redacted and never the password.
    """

    def __init__(self, target: RedisTarget, config: Config, error_class: type[MachineryError]) -> None:
        self.target = target
        self.config = config
        self.error_class = error_class
        self.health = _Health(target.describe() or "a user-supplied client")
        self._lock = threading.Lock()
        self._client: RedisClient | None = None
        self._blocking: RedisClient | None = None
        self.user_client: Any = config.redis.client
        if self.user_client is not None and not isinstance(self.user_client, redis.Redis):
            raise ConfigError(
                f"Config.redis.client must be a redis.Redis, got {type(self.user_client).__name__} "
                "(Redis Cluster clients come with cluster support, issue 8)"
            )
        #: Sentinel master: from redis+sentinel://, or Machinery's Config.redis.master_name with the
        #: URL's hosts as the sentinels
        self.master_name = target.master_name or (config.redis.master_name if target.hosts else "")
        if (
            self.user_client is None
            and not self.master_name
            and (target.cluster or config.redis.cluster_mode)
        ):
            raise ConfigError(
                f"Redis Cluster ({target.describe()}) is not supported yet: use one node, "
                "redis+sentinel://, or pass a redis.Redis in Config.redis.client"
            )

    # clients ---------------------------------------------------------------------------------
    @property
    def client(self) -> RedisClient:
        """The retrying client (built on first use; no I/O until a command is sent)."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._build(retries=RETRIES)
                client = self._client
        return client

    @property
    def blocking(self) -> RedisClient:
        """The client for blocking commands: no retries (the caller handles failures)."""
        client = self._blocking
        if client is None:
            with self._lock:
                if self._blocking is None:
                    self._blocking = self._build(retries=0)
                client = self._blocking
        return client

    def _kwargs(self, retries: int) -> dict[str, Any]:
        cfg = self.config.redis
        target = self.target
        timeout = max(cfg.read_timeout or 0, cfg.write_timeout or 0)
        kwargs: dict[str, Any] = {
            "socket_timeout": _timeout(timeout),
            "socket_connect_timeout": _timeout(cfg.connect_timeout),
            "retry": _Retry(self.health, retries),
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
            kwargs["connection_class"] = redis.SSLConnection
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
        if tls.insecure_skip_verify:
            out["ssl_cert_reqs"] = "none"
            out["ssl_check_hostname"] = False
        params = dict(self.target.tls_params)
        if "ssl_check_hostname" in params:
            from .url import parse_bool

            out["ssl_check_hostname"] = parse_bool(params.pop("ssl_check_hostname"), "ssl_check_hostname")
        out.update(params)
        if out.get("ssl_cert_reqs") in ("none", "CERT_NONE"):
            out["ssl_check_hostname"] = False
        return out

    def _pool(self, kwargs: dict[str, Any]) -> redis.ConnectionPool:
        cfg = self.config.redis
        max_active = cfg.max_active if cfg.max_active and cfg.max_active > 0 else None
        if cfg.wait and max_active:
            return redis.BlockingConnectionPool(  # type: ignore[no-untyped-call]
                max_connections=max_active, timeout=_timeout(cfg.connect_timeout), **kwargs
            )
        return redis.ConnectionPool(max_connections=max_active, **kwargs)

    def _build(self, retries: int) -> RedisClient:
        if self.user_client is not None:
            return self._derive(self.user_client, retries)
        kwargs = self._kwargs(retries)
        if self.master_name:
            from redis.sentinel import Sentinel

            sentinel_kwargs: dict[str, Any] = {
                "socket_timeout": kwargs["socket_timeout"],
                "socket_connect_timeout": kwargs["socket_connect_timeout"],
            }
            if self.config.redis.sentinel_password:
                sentinel_kwargs["password"] = self.config.redis.sentinel_password
            if self.target.tls:
                sentinel_kwargs["connection_class"] = redis.SSLConnection
                sentinel_kwargs.update(self._tls_kwargs())
            sentinel: Any = Sentinel(list(self.target.hosts), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
            kwargs.pop("db")
            return sentinel.master_for(self.master_name, db=self.target.db, **kwargs)
        return redis.Redis(connection_pool=self._pool(kwargs))

    def _derive(self, user: redis.Redis, retries: int) -> redis.Redis:
        """The user's client as is, or (for blocking commands) a twin on its own pool without retries."""
        if retries:
            return user
        pool = user.connection_pool
        if type(pool) is not redis.ConnectionPool:
            return user  # a sentinel or blocking pool: use it as it is
        kwargs = dict(pool.connection_kwargs)
        kwargs["retry"] = _Retry(self.health, 0)
        kwargs["redis_connect_func"] = _load_scripts
        return redis.Redis(
            connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
        )

    def max_block(self, seconds: float) -> float:
        """``seconds`` capped so that a blocking command returns before the socket timeout fires."""
        cfg = self.config.redis
        timeout = max(cfg.read_timeout or 0, cfg.write_timeout or 0)
        if timeout > 0:
            seconds = min(seconds, max(0.05, timeout * 0.8, timeout - 1.0))
        return round(max(seconds, 0.001), 3)

    # errors ----------------------------------------------------------------------------------
    def error(self, operation: str, exc: BaseException) -> MachineryError:
        """``exc`` as this connection's error class, naming the operation and the redacted URL."""
        where = self.target.describe() or "the user-supplied Redis client"
        text = str(exc) or type(exc).__name__
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
            message = (
                f"TLS with Redis at {where} failed during {operation}: {text} (check Config.tls ca_file / "
                "cert_file / key_file or the ssl_* URL parameters)"
            )
        elif isinstance(exc, outage_errors):
            self.health.failed(exc)
            message = f"Redis at {where} is unreachable during {operation}: {text}"
        else:
            message = f"Redis at {where}: {operation} failed: {text}"
        err = self.error_class(message)
        err.__cause__ = None
        return err

    def call(self, operation: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` translating redis errors (the slow path helper; hot paths inline this)."""
        try:
            result = fn()
        except RedisError as exc:
            raise self.error(operation, exc) from None
        if self.health.down_since is not None:
            self.health.ok()
        return result

    def run(self, commands: Sequence[tuple[Any, ...]], *, blocking: bool = False) -> list[Any]:
        """Send ``commands`` in one round trip and return their raw replies, error replies as exception
        objects (the caller decides). Skips redis-py's pipeline machinery: this is the hot path.

        The retrying client retries connection errors with back-off (the commands must be safe to send
        twice); ``blocking=True`` uses the client without retries (for BLMOVE) and raises at once.
        Raises redis-py's exceptions; callers translate them with :meth:`error`.
        """
        client = self.blocking if blocking else self.client
        pool = client.connection_pool
        failures = 0
        while True:
            conn = pool.get_connection()
            try:
                conn.send_packed_command(conn.pack_commands(commands))
                replies: list[Any] = []
                for _ in commands:
                    try:
                        replies.append(conn.read_response())
                    except ResponseError as exc:
                        replies.append(exc)
            except outage_errors as exc:
                conn.disconnect()
                if _permanent(exc):
                    raise
                failures += 1
                if blocking or failures > (RETRIES if self.health.reached else FIRST_CONTACT_RETRIES):
                    raise
                self.health.failed(exc)
                time.sleep(min(0.05 * 2 ** (failures - 1), 1.0))
                continue
            except BaseException:
                conn.disconnect()
                raise
            finally:
                pool.release(conn)
            break
        self.health.reached = True
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # a user-supplied client's connection, or SCRIPT FLUSH: load and send those again
            for script in _SCRIPTS:
                client.script_load(script.source)
            again = self.run([commands[i] for i in missing], blocking=blocking)
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        if self.health.down_since is not None:
            self.health.ok()
        return replies

    def close(self) -> None:
        """Disconnect the pools this connection built (a user-supplied client is left open)."""
        with self._lock:
            clients = [c for c in (self._client, self._blocking) if c is not None]
            self._client = self._blocking = None
        for client in clients:
            if client is self.user_client:
                continue
            try:
                client.connection_pool.disconnect()
            except Exception:  # pragma: no cover - closing must not raise
                logger.debug("closing a Redis pool failed", exc_info=True)
