"""One MongoDB connection per backend or lock object: a lazily built ``MongoClient``, the collections
and their indexes, and one place that turns driver errors into Machinery's errors.

- The client is built on first use (``from_url`` does no I/O) and again after a fork (pymongo clients
  must not cross a fork). ``serverSelectionTimeoutMS`` defaults to 10 s and ``connectTimeoutMS`` to 5 s
  (the driver's 30 s would make a wrong URL look like a hang); the URL's own values win.
- Dates come back timezone-aware (UTC).
- Indexes are created once per process, database and collection: the TTL index ``delete_at`` on
  ``tasks`` and ``group_metas`` and ``expires_at`` on ``locks``, all with ``expireAfterSeconds: 0`` (a
  document goes at the server's first TTL sweep after the date it holds).
- :meth:`MongoConnection.translating` maps driver errors to :class:`~machinery.errors.BackendError`
  (:class:`MongoUnavailableError` when the server cannot be reached: worth retrying) with the redacted
  URL and the operation, never the password.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC
from typing import Any, TypeVar

from bson.codec_options import CodecOptions
from pymongo import ASCENDING, MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import (
    AutoReconnect,
    ConnectionFailure,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)

from machinery.config import Config
from machinery.errors import BackendError, ConfigError

from .settings import MongoSettings
from .url import MongoTarget, driver_url

__all__ = [
    "GROUP_METAS",
    "HEARTBEATS",
    "LOCKS",
    "TASKS",
    "TASK_EVENTS",
    "Document",
    "MongoConnection",
    "MongoUnavailableError",
]

Document = dict[str, Any]

TASKS = "tasks"
GROUP_METAS = "group_metas"
LOCKS = "locks"
#: the events store (machinery_mongodb.events)
TASK_EVENTS = "task_events"
HEARTBEATS = "worker_heartbeats"
#: The date field each collection's TTL index is on.
TTL_FIELDS = {
    TASKS: "delete_at",
    GROUP_METAS: "delete_at",
    LOCKS: "expires_at",
    TASK_EVENTS: "delete_at",
    HEARTBEATS: "delete_at",
}
DEFAULT_TIMEOUTS = {"serverSelectionTimeoutMS": 10_000, "connectTimeoutMS": 5_000}
#: Driver options the URL may set (names as the parsed options spell them: lower case).
_URL_NAMES = {
    "serverSelectionTimeoutMS": "serverselectiontimeoutms",
    "connectTimeoutMS": "connecttimeoutms",
    "tlsCAFile": "tlscafile",
    "tlsCertificateKeyFile": "tlscertificatekeyfile",
    "tlsInsecure": "tlsinsecure",
}
#: MongoDB's "authentication failed" code.
AUTH_FAILED = 18
#: Retries of an idempotent operation whose connection was lost (each waits for a server, up to
#: ``serverSelectionTimeoutMS``): a server restart or failover is ridden out, not reported.
CONNECTION_RETRIES = 2

T = TypeVar("T")

_indexed: set[tuple[str, str, str]] = set()
_indexed_lock = threading.Lock()


class MongoUnavailableError(BackendError):
    """The server could not be reached or the connection broke: a retry may succeed."""


class MongoConnection:
    """The client, database and collections of one backend or lock object."""

    def __init__(self, target: MongoTarget, config: Config) -> None:
        self.target = target
        self.config = config
        settings = MongoSettings.of(config)
        self.database_name = target.database or settings.database_name
        self._given_client: MongoClient[Document] | None = settings.client
        self._client: MongoClient[Document] | None = None
        self._pid = 0
        self._lock = threading.Lock()

    # the client -------------------------------------------------------------------------------
    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for ``MongoClient`` besides the URL: timeouts and ``Config.tls``'s files
        (only when the URL turns TLS on and does not name its own)."""
        # keyword arguments win over the URL's options in pymongo: only give those the URL lacks
        options: dict[str, Any] = {
            name: value for name, value in DEFAULT_TIMEOUTS.items() if not self._in_url(name)
        }
        tls = self.config.tls
        if self.target.tls and tls.configured:
            if tls.ca_file and not self._in_url("tlsCAFile"):
                options["tlsCAFile"] = tls.ca_file
            if tls.cert_file and not self._in_url("tlsCertificateKeyFile"):
                if tls.key_file and tls.key_file != tls.cert_file:
                    raise ConfigError(
                        f"MongoDB at {self.target.describe()}: the driver takes the client certificate and "
                        "its key in one PEM file; concatenate tls.cert_file and tls.key_file into one file "
                        "and set tls.cert_file to it (or use the URL option tlsCertificateKeyFile)"
                    )
                options["tlsCertificateKeyFile"] = tls.cert_file
            if tls.insecure_skip_verify and not self._in_url("tlsInsecure"):
                options["tlsInsecure"] = True
        return options

    def _in_url(self, name: str) -> bool:
        return _URL_NAMES[name] in self.target.options

    @property
    def client(self) -> MongoClient[Document]:
        if self._given_client is not None:
            return self._given_client
        client, pid = self._client, os.getpid()
        if client is not None and self._pid == pid:
            return client
        with self._lock:
            if self._client is None or self._pid != pid:
                self._client = MongoClient(
                    driver_url(self.target), tz_aware=True, tzinfo=UTC, connect=False, **self.client_options()
                )
                self._pid = pid
            return self._client

    @property
    def database(self) -> Database[Document]:
        codec_options: CodecOptions[Document] = CodecOptions(tz_aware=True, tzinfo=UTC)
        return self.client.get_database(self.database_name, codec_options=codec_options)

    def collection(self, name: str) -> Collection[Document]:
        """A collection, its TTL index created on first use in this process."""
        collection = self.database[name]
        key = (self.target.describe(), self.database_name, name)
        if key not in _indexed:
            with _indexed_lock:
                if key not in _indexed:
                    with self.translating(f"creating the TTL index of {name!r}"):
                        collection.create_index(
                            [(TTL_FIELDS[name], ASCENDING)],
                            expireAfterSeconds=0,
                            name=f"{TTL_FIELDS[name]}_ttl",
                        )
                    _indexed.add(key)
        return collection

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None and self._pid == os.getpid():
            client.close()

    # errors -----------------------------------------------------------------------------------
    def error(self, operation: str, exc: BaseException) -> BackendError:
        """``exc`` as a BackendError naming the redacted URL and the operation."""
        text = str(exc)
        if self.target.password:
            text = text.replace(self.target.password, "***")
        error_class = BackendError
        if isinstance(exc, OperationFailure) and exc.code == AUTH_FAILED:
            hint = "authentication failed: check the user, password and authSource"
        elif isinstance(exc, ServerSelectionTimeoutError):
            hint, error_class = f"no server answered: {text}", MongoUnavailableError
        elif isinstance(exc, (AutoReconnect, ConnectionFailure)):
            hint, error_class = f"connection lost: {text}", MongoUnavailableError
        else:
            hint = f"{type(exc).__name__}: {text}"
        return error_class(f"MongoDB at {self.target.describe()}: {operation} failed ({hint})")

    def call(self, operation: str, fn: Callable[[], T]) -> T:
        """Run the idempotent ``fn``; a connection lost on the way (a restart, a failover; the driver
        retries only on replica sets) is retried :data:`CONNECTION_RETRIES` times, other driver errors
        raise at once as BackendError. Never for a write whose repetition would change its answer."""
        for attempt in range(CONNECTION_RETRIES + 1):
            try:
                return fn()
            except AutoReconnect as exc:  # includes ServerSelectionTimeoutError: it already waited
                if isinstance(exc, ServerSelectionTimeoutError) or attempt == CONNECTION_RETRIES:
                    raise self.error(operation, exc) from None
                time.sleep(0.05 * 2**attempt)
            except PyMongoError as exc:
                raise self.error(operation, exc) from None
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def translating(self, operation: str) -> Iterator[None]:
        """Raise driver errors in the block as BackendError (no password, no driver chain)."""
        try:
            yield
        except PyMongoError as exc:
            raise self.error(operation, exc) from None
