"""Connections for the AMQP broker and backend: URLs, errors, back-off and a pool of links.

pika's ``BlockingConnection`` is not thread-safe: a connection (and its channels) may only be used
by one thread at a time. Producers therefore take a :class:`Link` (one connection + one channel in
publisher-confirm mode) out of a :class:`LinkPool` for the duration of one operation and give it back
afterwards, so each link is only ever touched by the thread that holds it. The consumer side has its
own connection owned by a single I/O thread (see :mod:`machinery_amqp.broker`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import pika
import pika.exceptions as pex
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.connection import Parameters
from pika.spec import BasicProperties

from machinery.backoff import Backoff
from machinery.config import Config
from machinery.errors import BackendError, BrokerError, ConfigError
from machinery.redact import redact_url

__all__ = [
    "MAX_SHORT_STRING",
    "AMQPAccessError",
    "AMQPError",
    "AMQPTLSError",
    "AMQPUnavailableError",
    "Confirmed",
    "Endpoint",
    "Link",
    "LinkPool",
    "Publish",
    "UnroutableError",
    "connect",
    "connection_parameters",
    "is_connection_error",
    "split_urls",
]

logger = logging.getLogger("machinery.amqp")


class _QuietNotFound(logging.Filter):
    """pika logs a WARNING for every channel closed by the server. A 404 for a missing queue is how
    this package asks "is there a result?" (and pending() of a queue never declared): not worth a warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "NOT_FOUND - no queue" not in record.getMessage()


logging.getLogger("pika.channel").addFilter(_QuietNotFound())

T = TypeVar("T")

#: Defaults applied unless the URL's query string sets them (``?heartbeat=10`` ...).
DEFAULT_HEARTBEAT = 30  # seconds; pika answers heartbeats inside process_data_events / blocking calls
DEFAULT_SOCKET_TIMEOUT = 5.0
DEFAULT_STACK_TIMEOUT = 10.0  # whole connection set-up (TCP + TLS + AMQP handshake)
DEFAULT_BLOCKED_TIMEOUT = 60.0  # a connection blocked by a RabbitMQ alarm fails instead of hanging
#: The most bytes of an AMQP short string (a queue name, a message_id).
MAX_SHORT_STRING = 255


class AMQPError(BrokerError, BackendError):
    """RabbitMQ failed or refused an operation. Messages never contain a password."""


class AMQPAccessError(AMQPError):
    """RabbitMQ refused the login or the virtual host: retrying does not help, fix the URL."""


class AMQPTLSError(AMQPAccessError):
    """A TLS certificate check failed (ours of the server, or the server's of ours): retrying cannot help."""


#: OpenSSL's words for a failed certificate check, on either side: retrying cannot fix these
_TLS_REFUSALS = ("CERTIFICATE_VERIFY_FAILED", "CERTIFICATE_REQUIRED", "UNKNOWN_CA", "BAD_CERTIFICATE")


class AMQPUnavailableError(AMQPError):
    """RabbitMQ could not be reached (or the connection kept dropping) within the retry time."""


class UnroutableError(AMQPError):
    """A published message reached no queue (``mandatory=True`` returned it): nothing was stored."""


def split_urls(url: str, config: Config) -> list[str]:
    """The broker URL, split by ``config.multiple_broker_separator`` into a failover list."""
    separator = config.multiple_broker_separator
    parts = url.split(separator) if separator else [url]
    urls = [part.strip() for part in parts if part.strip()]
    for one in urls:
        if urlsplit(one).scheme.lower() not in ("amqp", "amqps"):
            raise ConfigError(
                f"{redact_url(one)!r} is not an amqp:// or amqps:// URL "
                "(a failover list must be split with multiple_broker_separator)"
            )
    if not urls:
        raise ConfigError("empty AMQP URL")
    return urls


def connection_parameters(urls: list[str], config: Config, role: str) -> list[Parameters]:
    """pika parameters for each URL, tried in order by :func:`connect` (Machinery's failover list).

    ``amqps://`` uses TLS with the files of ``config.tls``; heartbeats are on (30 s unless the URL
    says ``?heartbeat=``), the socket and handshake time out after a few seconds, and a connection
    blocked by a RabbitMQ resource alarm fails after a minute instead of hanging.
    """
    result: list[Parameters] = []
    for url in urls:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        try:
            params: Parameters = pika.URLParameters(url)
        except Exception as exc:  # pika raises ValueError/TypeError on bad query values
            raise ConfigError(f"invalid AMQP URL {redact_url(url)!r}: {exc}") from None
        if parts.path in ("", "/"):
            params.virtual_host = "/"
        else:
            params.virtual_host = unquote(parts.path[1:])
        if parts.scheme.lower() == "amqps":
            context = config.tls.ssl_context("amqp")  # certificate and host name verified
            params.ssl_options = pika.SSLOptions(context, server_hostname=parts.hostname or "")
            if parts.port is None:
                params.port = 5671
        defaults: dict[str, Any] = {
            "heartbeat": DEFAULT_HEARTBEAT,
            "socket_timeout": DEFAULT_SOCKET_TIMEOUT,
            "stack_timeout": DEFAULT_STACK_TIMEOUT,
            "blocked_connection_timeout": DEFAULT_BLOCKED_TIMEOUT,
            "connection_attempts": 1,
            "retry_delay": 0.0,
        }
        for name, value in defaults.items():
            if name not in query:
                setattr(params, name, value)
        params.client_properties = {
            "connection_name": f"machinery-amqp {role} pid {os.getpid()} on {socket.gethostname()}",
            "product": "machinery-amqp",
        }
        result.append(params)
    return result


def _hide(text: str, urls: list[str]) -> str:
    """Remove every password of ``urls`` from ``text`` (pika's messages normally hold none)."""
    for url in urls:
        password = urlsplit(url).password
        if password:
            text = text.replace(password, "***")
            decoded = unquote(password)
            if decoded:
                text = text.replace(decoded, "***")
    return text


def _where(urls: list[str]) -> str:
    return ", ".join(redact_url(u) for u in urls)


def connect(params: list[Parameters], urls: list[str]) -> BlockingConnection:
    """Open a connection to the first URL that answers; errors name the (redacted) URLs.

    A refused login or virtual host raises :class:`AMQPAccessError` (permanent), anything else
    :class:`AMQPUnavailableError` (worth retrying).
    """
    try:
        return BlockingConnection(params if len(params) > 1 else params[0])
    except (pex.ProbableAuthenticationError, pex.AuthenticationError) as exc:
        user = ", ".join(
            sorted({p.credentials.username for p in params if hasattr(p.credentials, "username")})
        )
        raise AMQPAccessError(
            f"RabbitMQ at {_where(urls)} refused the login of user {user!r}: check the user name and "
            f"password in the URL ({_hide(_reason(exc), urls)})"
        ) from None
    except pex.ProbableAccessDeniedError as exc:
        vhosts = ", ".join(sorted({repr(p.virtual_host) for p in params}))
        raise AMQPAccessError(
            f"RabbitMQ at {_where(urls)} refused access to virtual host {vhosts}: the vhost does not exist "
            f"or the user has no permission on it ({_hide(_reason(exc), urls)})"
        ) from None
    except (pex.AMQPError, OSError) as exc:
        reason = _hide(_reason(exc), urls)
        if any(word in reason.upper() for word in _TLS_REFUSALS):
            hint = (
                "the URL's host must be a name or address in the server's certificate"
                if "mismatch" in reason.lower()
                else "check Config.tls ca_file / cert_file / key_file"
            )
            raise AMQPTLSError(f"TLS with RabbitMQ at {_where(urls)} failed: {reason} ({hint})") from None
        raise AMQPUnavailableError(f"cannot connect to RabbitMQ at {_where(urls)}: {reason}") from None


def _reason(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


def is_connection_error(exc: BaseException, connection: BlockingConnection | None = None) -> bool:
    """True when ``exc`` means the connection is gone (retry on a new one), not a refused operation."""
    if isinstance(exc, AMQPUnavailableError | OSError | pex.AMQPConnectionError | pex.StreamLostError):
        return True
    if isinstance(exc, pex.ChannelClosedByBroker):
        return False  # 404/406/403: the operation is wrong, the connection is fine
    if isinstance(exc, pex.AMQPError):
        return connection is None or not connection.is_open
    return False


class Link:
    """One connection with one publisher-confirm channel, used by one thread at a time.

    ``declared`` caches what was declared on this connection (names of exchanges, queues and
    bindings), so a producer declares its topology once per connection, not once per message.
    """

    def __init__(self, connection: BlockingConnection) -> None:
        self.connection = connection
        self._channel: BlockingChannel | None = None
        self.declared: set[str] = set()
        self.last_used = time.monotonic()
        #: queue -> when this connection last gave a message of it back (``basic.nack`` is asynchronous)
        self.requeued: dict[str, float] = {}
        self._batch: _BatchChannel | None = None

    def note_requeue(self, queue: str) -> None:
        now = time.monotonic()
        if len(self.requeued) > 1000:
            self.requeued = {q: t for q, t in self.requeued.items() if now - t < 5.0}
        self.requeued[queue] = now

    def requeued_recently(self, queue: str, within: float = 1.0) -> bool:
        return time.monotonic() - self.requeued.get(queue, -1e9) < within

    @property
    def channel(self) -> BlockingChannel:
        """The confirm-mode channel, reopened when a channel error closed it."""
        if self._channel is None or not self._channel.is_open:
            self._channel = self.connection.channel()
            self._channel.confirm_delivery()
        return self._channel

    def reset_channel(self) -> None:
        """Forget the channel (after a channel error closed it)."""
        channel, self._channel = self._channel, None
        if channel is not None and channel.is_open:
            with contextlib.suppress(Exception):  # best effort
                channel.close()

    def publish_confirmed(self, messages: Sequence[Publish]) -> Confirmed:
        """Publish ``messages`` (``mandatory``) and wait for RabbitMQ's confirms of them all at once: one
        wait per batch instead of one per message (see :class:`_BatchChannel`)."""
        if (
            self._batch is None or not self._batch.is_open or self._batch.pending
        ):  # pending: a batch broke off
            if self._batch is not None and self._batch.is_open:
                with contextlib.suppress(Exception):
                    self._batch.channel.close()
            self._batch = _BatchChannel(self.connection)
        return self._batch.publish(messages)

    @property
    def is_open(self) -> bool:
        return bool(self.connection.is_open)

    def ping(self) -> None:
        """Process pending frames (heartbeats, a close from the server) without blocking."""
        self.connection.process_data_events(time_limit=0)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # the connection may already be broken
            if self.connection.is_open:
                self.connection.close()


class Publish(NamedTuple):
    """One message for :meth:`Link.publish_confirmed`."""

    exchange: str
    routing_key: str
    body: bytes
    properties: BasicProperties


class Confirmed(NamedTuple):
    """What RabbitMQ answered for a batch: positions in the batch, each in exactly one set."""

    acked: set[int]
    #: returned as unroutable (``mandatory``), then acked
    returned: set[int]
    #: refused (``basic.nack``)
    nacked: set[int]


class _BatchChannel:
    """A second confirm-mode channel of a link, for batches: every message of a batch is sent, then the
    confirms are awaited together (RabbitMQ acks several with ``multiple``).

    pika's ``BlockingChannel`` waits for each message's confirm inside ``basic_publish``, so this drives
    the channel beneath it (``BlockingChannel._impl``, pika's asynchronous channel, in the thread that
    holds the link) and waits as ``BlockingChannel`` does (``BlockingConnection._flush_output``). Both
    are pika internals (used with pika 1.4.4; the range allows 1.3): the tests of the batch path run on
    RabbitMQ.
    """

    def __init__(self, connection: BlockingConnection) -> None:
        self.connection = connection
        self.channel = connection.channel()
        impl: Any = self.channel._impl  # type: ignore[attr-defined]  # pika has no public batch confirms
        self.impl = impl
        self.next_tag = 1  # RabbitMQ numbers a confirm channel's publishes from 1
        self.pending: dict[int, int] = {}  # delivery tag -> position in the current batch
        self.answers: dict[int, bool] = {}  # position -> acked (False: nacked)
        self.returned: list[tuple[str, bytes]] = []  # (routing key, body), in the order returned
        self.closed_by: BaseException | None = None
        ready: list[bool] = []
        impl.add_on_close_callback(self._on_close)
        impl.add_on_return_callback(self._on_return)
        impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _frame: ready.append(True))
        self._wait(lambda: bool(ready))

    @property
    def is_open(self) -> bool:
        return self.closed_by is None and bool(self.impl.is_open)

    def _on_close(self, _channel: object, reason: BaseException) -> None:
        self.closed_by = reason

    def _on_return(self, _channel: object, method: Any, _properties: object, body: bytes) -> None:
        self.returned.append((method.routing_key, body))

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        tags = (
            [t for t in self.pending if t <= method.delivery_tag]
            if method.multiple
            else [method.delivery_tag]
        )
        for tag in tags:
            position = self.pending.pop(tag, None)
            if position is not None:
                self.answers[position] = acked

    def _wait(self, done: Callable[[], bool]) -> None:
        """Do the connection's I/O until ``done()`` (what ``BlockingChannel`` itself waits with: the
        public ``process_data_events`` would sit out its whole time limit)."""
        flush: Callable[..., None] = self.connection._flush_output  # type: ignore[attr-defined]
        flush(lambda: done() or self.closed_by is not None)
        if self.closed_by is not None:
            raise self.closed_by

    def publish(self, messages: Sequence[Publish]) -> Confirmed:
        self.answers, self.returned = {}, []
        sent: list[Publish] = []
        for position, msg in enumerate(messages):
            self.impl.basic_publish(msg.exchange, msg.routing_key, msg.body, msg.properties, mandatory=True)
            self.pending[self.next_tag] = position
            self.next_tag += 1
            sent.append(msg)
        self._wait(lambda: not self.pending)
        result = Confirmed(set(), set(), set())
        returned = list(self.returned)
        for position, acked in sorted(self.answers.items()):
            msg = sent[position]
            if not acked:
                result.nacked.add(position)
            elif (msg.routing_key, msg.body) in returned:  # a return comes before its message's ack
                returned.remove((msg.routing_key, msg.body))
                result.returned.add(position)
            else:
                result.acked.add(position)
        return result


class LinkPool:
    """Links handed out to one thread at a time; idle ones are kept for reuse (at most ``max_idle``).

    :meth:`run` calls ``fn(link)`` and, when the connection breaks (RabbitMQ restarting, a dropped
    TCP connection, a missed heartbeat), retries on a fresh connection with exponential back-off for
    up to ``reconnect_timeout`` seconds once a connection has worked (riding out a server restart), or
    ``retry_timeout`` seconds while none ever has (a wrong host fails quickly). A refused login fails at
    once with :class:`AMQPAccessError`.
    """

    def __init__(
        self,
        urls: list[str],
        config: Config,
        role: str,
        *,
        max_idle: int = 8,
        retry_timeout: float = 15.0,
        reconnect_timeout: float = 60.0,
    ) -> None:
        self.urls = urls
        self.config = config
        self.role = role
        self.max_idle = max_idle
        self.retry_timeout = retry_timeout
        self.reconnect_timeout = max(reconnect_timeout, retry_timeout)
        self.connected_once = False
        self._params: list[Parameters] | None = None
        self._idle: list[Link] = []
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()

    def _parameters(self) -> list[Parameters]:
        if self._params is None:
            self._params = connection_parameters(self.urls, self.config, self.role)
        return self._params

    def _take(self) -> Link:
        with self._lock:
            if os.getpid() != self._pid:  # forked: the parent's sockets are not ours to use
                self._idle = []
                self._pid = os.getpid()
            if self._closed:
                raise AMQPError(f"the AMQP {self.role} is closed")
            candidates, self._idle = self._idle, []
        link: Link | None = None
        while candidates:
            candidate = candidates.pop()
            if link is None:
                try:
                    candidate.ping()
                    if candidate.is_open:
                        link = candidate
                        continue
                except Exception:  # a dead idle connection: drop it
                    pass
                candidate.close()
            else:
                self._give_back(candidate)
        if link is not None:
            return link
        link = Link(connect(self._parameters(), self.urls))
        self.connected_once = True
        return link

    def _give_back(self, link: Link) -> None:
        link.last_used = time.monotonic()
        with self._lock:
            if not self._closed and link.is_open and len(self._idle) < self.max_idle:
                self._idle.append(link)
                return
        link.close()

    def run(self, fn: Callable[[Link], T], *, retry_timeout: float | None = None) -> T:
        """``fn(link)`` on a pooled link, retried on a new connection when the connection breaks."""
        window = self.reconnect_timeout if self.connected_once else self.retry_timeout
        deadline = time.monotonic() + max(window, retry_timeout or 0.0)
        backoff = Backoff(0.1, 2.0)
        while True:
            link: Link | None = None
            try:
                link = self._take()
                result = fn(link)
            except AMQPAccessError:
                if link is not None:
                    link.close()
                raise
            except Exception as exc:
                if not is_connection_error(exc, link.connection if link is not None else None):
                    if link is not None:
                        if isinstance(exc, pex.AMQPChannelError):
                            link.reset_channel()
                        self._give_back(link)
                    if isinstance(exc, pex.ChannelClosedByBroker):
                        raise AMQPError(
                            f"RabbitMQ at {_where(self.urls)} refused an operation: ({exc.reply_code}) "
                            f"{exc.reply_text} (a queue or exchange declared elsewhere with other arguments "
                            "or type? compare amqp.exchange_type / amqp.queue_declare_args)"
                        ) from None
                    raise
                if link is not None:
                    link.close()
                delay = backoff.next()
                if time.monotonic() + delay > deadline:
                    if isinstance(exc, AMQPError):
                        raise
                    raise AMQPUnavailableError(
                        f"lost the connection to RabbitMQ at {_where(self.urls)} and could not get it back "
                        f"in {window:.0f}s: {_hide(_reason(exc), self.urls)}"
                    ) from None
                logger.warning(
                    "amqp %s: connection problem (%s); retrying in %.2fs",
                    self.role,
                    _hide(_reason(exc), self.urls),
                    delay,
                )
                time.sleep(delay)
                continue
            self._give_back(link)
            return result

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for link in idle:
            link.close()


def declare_exchange(link: Link, name: str, exchange_type: str) -> None:
    """Declare a durable exchange once per connection (the default exchange ``""`` needs none)."""
    if not name or ("x:" + name) in link.declared:
        return
    link.channel.exchange_declare(name, exchange_type=exchange_type, durable=True)
    link.declared.add("x:" + name)


class Endpoint:
    """What the AMQP broker and backend share: the URL (or failover list) and the retry windows of
    their connection pools. Mixed into both (the subclass calls :meth:`_endpoint` first)."""

    config: Config
    exchange: str
    url: str
    urls: list[str]

    def _endpoint(self, url: str, retry_timeout: float, reconnect_timeout: float) -> None:
        self.url = url
        self.urls = split_urls(url, self.config)
        self._timeouts = (retry_timeout, reconnect_timeout)

    def _link_pool(self, role: str) -> LinkPool:
        """A pool of connections for ``role`` (named in log lines and errors)."""
        retry, reconnect = self._timeouts
        return LinkPool(self.urls, self.config, role, retry_timeout=retry, reconnect_timeout=reconnect)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {redact_url(self.url)} exchange={self.exchange!r}>"
