"""Configuration: Machinery's ``Config`` fields, in snake_case, with its env and YAML names.

Loading
-------
- :meth:`Config.from_env` reads Machinery's environment variables (``BROKER``, ``DEFAULT_QUEUE``,
  ``AMQP_EXCHANGE``, ``REDIS_MAX_IDLE``, ...). Nested ones are also accepted with the Go struct prefix,
  as envconfig does (``AMQP_AMQP_EXCHANGE``, ``REDIS_REDIS_MAX_IDLE``, ``DYNAMODB_TASK_STATES_TABLE``); the
  prefixed name wins when both are set. Go's ``MULTIPLE_BROKEN_SEPARATOR`` typo is accepted next to
  ``MULTIPLE_BROKER_SEPARATOR`` (which wins), ``REDIS_CLUSTER_ENABLED`` (v2) next to ``REDIS_CLUSTER_MODE``
  (v1). Settings Machinery never had are read from ``MACHINERY_*`` names (table below). Booleans take
  ``true/false``, ``1/0``, ``yes/no`` (also ``t/f``, ``on/off``), case-insensitive. An empty value for a
  number or boolean means "not set" (an empty ``SQS_VISIBILITY_TIMEOUT`` means "the queue's own setting").
  ``AMQP_QUEUE_DECLARE_ARGS`` / ``AMQP_QUEUE_BINDING_ARGS`` take ``k:v,k:v`` or a JSON object; declare-arg
  values that look like numbers or booleans are converted (``x-max-priority:10`` gives the int ``10``),
  binding-arg values stay strings (as in Go). Loading the environment never turns TLS on (Go's #517):
  TLS is used when a URL scheme asks for it (``rediss://``, ``amqps://``...), the ``tls`` section only
  supplies the files.
- :meth:`Config.from_yaml` reads Machinery's YAML keys, of any file size (Go read at most 1000 bytes),
  including Go's spellings ``max_idle_timeout``, ``receive_wait_time_seconds``,
  ``receive_visibility_timeout``, ``visibility_hearth_beat`` (sic) and ``cluster_enabled`` next to the
  sane ones (``idle_timeout``, ``wait_time_seconds``, ``visibility_timeout``, ``visibility_heartbeat``,
  ``cluster_mode``). A section that is missing keeps its defaults (Go set ``AMQP`` to nil). Unknown keys
  are logged as warnings, wrong types raise :class:`~machinery.errors.ConfigError` naming the key.
  Needs PyYAML: ``pip install 'machinery-core[yaml]'``.
- Both call :meth:`Config.validate`, which raises one ``ConfigError`` listing every problem and how to fix
  it.

Python additions (no Machinery equivalent)
------------------------------------------
==================================  ======================================  ==========================
field                               env (first name wins)                   YAML
==================================  ======================================  ==========================
eager                               MACHINERY_EAGER                         eager
tls.ca_file / cert_file / key_file  MACHINERY_TLS_CA_FILE, TLS_CA_FILE ...  tls: {ca_file: ...}
tls.insecure_skip_verify            MACHINERY_TLS_INSECURE_SKIP_VERIFY,     tls: {insecure_skip_verify}
                                    TLS_INSECURE_SKIP_VERIFY
sqlite.lease / renew                MACHINERY_SQLITE_LEASE / _RENEW         sqlite: {lease, renew}
worker.<name>                       MACHINERY_WORKER_<NAME>                 worker: {<name>: ...}
mongodb.database                    MACHINERY_MONGODB_DATABASE              mongodb: {database}
gcppubsub.max_extension             MACHINERY_GCPPUBSUB_MAX_EXTENSION       gcppubsub: {max_extension}
==================================  ======================================  ==========================

Live reload
-----------
``Config.from_yaml(path, reload=True)`` starts a daemon thread that checks the file about once a second
(it re-reads and compares the bytes, so coarse mtimes do not hide an edit; a change must stay the same for a
short settle delay, so a half-written file is not applied). Stop it with :meth:`Config.stop_reloading`
(or use the config as a context manager). :meth:`Config.reload` does one check synchronously (e.g. from
a SIGHUP handler). Only what changed *in the file* since the last good load is considered, so a value
set in code stays until the file changes that same field.

Each changed field is either applied in place, under a lock, one attribute assignment per field (a
reader sees the old or the new value, never a mix; use :meth:`Config.snapshot` for a consistent view
of several fields), or, when it needs a restart, left alone with a WARNING
``field X changed in <file>; restart to apply``. A file that cannot be read, parsed or validated (or is
empty: probably half-written) logs a WARNING and changes nothing. Listeners registered with
:meth:`Config.on_reload` get a :class:`ReloadEvent` after every processed change (also for failures);
they run outside the lock.

Safe at run time (:data:`RELOADABLE_FIELDS`): the values that brokers, backends and workers read each time
they use them (plugins must not cache these):

- ``results_expire_in`` (next result written)
- ``sqs.wait_time_seconds``, ``sqs.visibility_timeout``, ``sqs.visibility_heartbeat`` (next receive /
  next task)
- ``redis.normal_tasks_poll_period``, ``redis.delayed_tasks_poll_period`` (next poll)
- ``sqlite.lease``, ``sqlite.renew`` (next lease taken / renewed)
- ``worker.*`` (next task; ``default_concurrency`` for workers created afterwards, ``shutdown_grace`` at the
  next stop)

Restart needed: everything that chooses or builds a connection, or names things that already exist on
the server: ``broker``, ``multiple_broker_separator``, ``result_backend``, ``lock``, ``default_queue``,
``eager``, ``no_unix_signals``, all of ``amqp.*`` (exchange, queues, bindings and QoS are declared on
connect), ``redis`` pool/connection settings, ``redis.delayed_tasks_key`` (would orphan scheduled tasks),
``redis.cluster_mode``, ``redis.master_name``, ``redis.sentinel_password``, ``dynamodb.*`` tables,
``tls.*``, ``mongodb.database`` and ``gcppubsub.max_extension``.

Secrets
-------
``repr(config)``, :meth:`Config.redacted` and every log line here pass URLs through
:func:`machinery.redact.redact_url` and show ``***`` for password-like fields (``redis.sentinel_password``)
and only the type of client objects.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import json
import logging
import math
import os
import re
import ssl
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from types import TracebackType
from typing import Any, Literal

from .errors import ConfigError
from .redact import redact_url

__all__ = [
    "RELOADABLE_FIELDS",
    "AMQPConfig",
    "Config",
    "DynamoDBConfig",
    "GCPPubSubConfig",
    "MongoDBConfig",
    "RedisConfig",
    "ReloadEvent",
    "ReloadListener",
    "SQLiteConfig",
    "SQSConfig",
    "TLSConfig",
    "WorkerConfig",
]

logger = logging.getLogger(__name__)

YAML_EXTRA_HINT = "pip install 'machinery-core[yaml]'"

# --------------------------------------------------------------------------------------------------------
# Safe display (repr, redacted(), log lines)

_SECRET_FIELD_RE = re.compile(r"password|passwd|secret|token|credential|api_key|access_key", re.IGNORECASE)
_URL_FIELDS = frozenset({"broker", "result_backend", "lock"})


class _Opaque:
    """Shows as its text, unquoted, in a ``repr`` (used for client objects)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Opaque) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def _display(name: str, value: Any) -> Any:
    """What may be shown for field ``name``: URLs redacted, secrets masked, clients reduced to their type."""
    if name == "client" or name.endswith("_client"):
        if value is None:
            return None
        kind = type(value)
        return _Opaque(f"<{kind.__module__}.{kind.__qualname__}>")
    if isinstance(value, str):
        if _SECRET_FIELD_RE.search(name):
            return "***" if value else ""
        if name in _URL_FIELDS or name.endswith(("_url", "_uri")) or "://" in value or "@" in value:
            return redact_url(value)
    return value


def _safe_repr(obj: Any) -> str:
    parts = []
    for f in fields(obj):
        if not f.repr:
            continue
        value = getattr(obj, f.name)
        shown = value if is_dataclass(value) else _display(f.name, value)
        parts.append(f"{f.name}={shown!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"


class _Section:
    """Base of the sub-configs: a ``repr`` that never shows a secret."""

    def __repr__(self) -> str:
        return _safe_repr(self)


# --------------------------------------------------------------------------------------------------------
# The dataclasses


@dataclass(repr=False)
class AMQPConfig(_Section):
    """RabbitMQ settings (Machinery's ``AMQPConfig``). All need a restart to change."""

    exchange: str = "machinery_exchange"
    exchange_type: str = "direct"
    #: Arguments for ``queue.declare`` of task queues, e.g. ``{"x-max-priority": 10}``.
    queue_declare_args: dict[str, Any] = field(default_factory=dict)
    #: Arguments for ``queue.bind``, e.g. ``{"x-match": "any", "image-type": "png"}`` for a headers exchange.
    queue_binding_args: dict[str, Any] = field(default_factory=dict)
    binding_key: str = "machinery_task"
    #: ``basic.qos`` prefetch; 0 means unlimited.
    prefetch_count: int = 3
    auto_delete: bool = False
    delayed_queue: str = ""


@dataclass(repr=False)
class SQSConfig(_Section):
    """Amazon SQS settings (Machinery's ``SQSConfig``).

    Deviation from Go: ``wait_time_seconds`` defaults to 20 (long polling) rather than 0.
    """

    #: Long-poll time of ReceiveMessage, 0-20 s. Reloadable.
    wait_time_seconds: int = 20
    #: Visibility timeout asked for on receive; ``None`` uses the queue's own setting. Reloadable.
    visibility_timeout: int | None = None
    #: Extend the visibility of a running task every ``visibility_timeout / 2`` s. Reloadable.
    visibility_heartbeat: bool = True
    client: Any = None


@dataclass(repr=False)
class RedisConfig(_Section):
    """Redis settings (Machinery's ``RedisConfig``): timeouts in seconds, poll periods in ms, as in Go."""

    max_idle: int = 3
    max_active: int = 0
    #: YAML ``max_idle_timeout`` (Go's spelling) or ``idle_timeout``.
    idle_timeout: int = 240
    wait: bool = False
    read_timeout: int = 15
    write_timeout: int = 15
    connect_timeout: int = 15
    #: Reloadable. 0 means the broker's default (1000 ms).
    normal_tasks_poll_period: int = 1000
    #: Reloadable. 0 means the broker's default (500 ms).
    delayed_tasks_poll_period: int = 500
    delayed_tasks_key: str = "delayed_tasks"
    client_name: str = ""
    master_name: str = ""
    #: v1 ``ClusterMode`` / v2 ``ClusterEnabled``.
    cluster_mode: bool = False
    sentinel_password: str = ""
    # Python additions (machinery-redis):
    #: Seconds a dead worker's in-flight messages stay leased before they are redelivered.
    lease: float = 30.0
    #: Seconds between a live worker's lease renewals (at most half the lease).
    heartbeat: float = 10.0
    #: Opt-in priorities: messages with priority > 0 use a sorted set (priority 0 stays Go-compatible).
    priority: bool = False
    #: Move due ETA tasks to their queues from this process (off: another process does it, #466).
    delayed_tasks_mover: bool = True
    #: Also honour Go Machinery's ``TriggerChordMutex`` so a mixed Go/Python fleet fires a chord once.
    go_compatible_chords: bool = True
    client: Any = None


@dataclass(repr=False)
class GCPPubSubConfig(_Section):
    """Google Pub/Sub settings (code only in Machinery; ``max_extension`` may also come from env/YAML)."""

    client: Any = None
    #: Seconds the ack deadline of a running message may be extended in total.
    max_extension: float = 600.0


@dataclass(repr=False)
class MongoDBConfig(_Section):
    """MongoDB settings (code only in Machinery; ``database`` may also come from env/YAML)."""

    client: Any = None
    database: str = "machinery"


@dataclass(repr=False)
class DynamoDBConfig(_Section):
    """DynamoDB settings (Machinery's ``DynamoDBConfig``)."""

    task_states_table: str = "task_states"
    group_metas_table: str = "group_metas"
    client: Any = None


@dataclass(repr=False)
class TLSConfig(_Section):
    """TLS files for ``rediss://``, ``amqps://`` and friends. Empty means "system defaults".

    These never turn TLS on by themselves: the URL scheme does. Plugins build their context with
    :meth:`ssl_context`.
    """

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    insecure_skip_verify: bool = False

    @property
    def configured(self) -> bool:
        """True when anything differs from the system defaults."""
        return bool(self.ca_file or self.cert_file or self.key_file or self.insecure_skip_verify)

    def ssl_context(self) -> ssl.SSLContext:
        """A client-side ``SSLContext`` with these files (system CAs when ``ca_file`` is empty)."""
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file or None)
            if self.cert_file:
                ctx.load_cert_chain(self.cert_file, self.key_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"TLS files could not be loaded ({exc}); check tls.ca_file / tls.cert_file / tls.key_file "
                "(env MACHINERY_TLS_CA_FILE, MACHINERY_TLS_CERT_FILE, MACHINERY_TLS_KEY_FILE)"
            ) from exc
        if self.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


@dataclass(repr=False)
class SQLiteConfig(_Section):
    """The built-in ``sqlite://`` broker: lease length and renewal period, in seconds. Reloadable."""

    lease: float = 30.0
    renew: float = 10.0


@dataclass(repr=False)
class WorkerConfig(_Section):
    """Worker defaults (Python additions; Machinery had none of these as settings). All reloadable."""

    #: Concurrency used when a worker is created with concurrency 0 (Go: unbounded goroutines).
    default_concurrency: int = 8
    #: Seconds a stopping worker waits for running tasks before returning the rest to the queue.
    shutdown_grace: float = 30.0
    #: An unregistered task is requeued at least this many times ...
    unregistered_requeue_limit: int = 20
    #: ... and for at least this many seconds, before it fails as "not registered".
    unregistered_requeue_seconds: float = 60.0
    #: A worker holds at most ``concurrency * prefetch_multiplier`` messages. 1 (the default) never
    #: fetches more than free slots (Go #559); more buys throughput with short tasks.
    prefetch_multiplier: int = 1
    #: Longest a worker's fetch blocks, so quit() is noticed within this many seconds.
    poll_timeout: float = 1.0
    #: Write RECEIVED and STARTED states (Machinery does). Off saves two writes per task.
    store_intermediate_states: bool = True


@dataclass(frozen=True)
class ReloadEvent:
    """What one reload of a YAML file did; passed to :meth:`Config.on_reload` listeners.

    ``applied`` and ``restart_required`` map dotted field names (``redis.normal_tasks_poll_period``) to
    ``(running value, file value)``. Values in ``restart_required`` are shown redacted (they may be URLs
    with passwords). ``error`` is set when the file could not be used; nothing changed then.
    """

    path: str
    applied: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)
    restart_required: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)
    error: str | None = None

    @property
    def changed(self) -> bool:
        """True when at least one field was applied."""
        return bool(self.applied)


ReloadListener = Callable[[ReloadEvent], None]


@dataclass(repr=False)
class Config:
    """Everything Machinery needs to know. Defaults run with no server (``sqlite://``).

    Deviation from Go Machinery: the default broker and backend are the embedded
    ``sqlite:///machinery.db`` rather than a local RabbitMQ.

    Build one by hand, with :meth:`from_env` or with :meth:`from_yaml` (optionally live-reloading; see the
    module docs for which fields change at run time). ``repr()`` never shows a password.
    Copies (``copy.copy``/``copy.deepcopy``/:meth:`snapshot`) copy every section but share client objects,
    and never carry the file watcher or listeners.
    """

    broker: str = "sqlite:///machinery.db"
    #: Splits ``broker`` into several URLs tried in order (AMQP failover). Env ``MULTIPLE_BROKER_SEPARATOR``
    #: (or Go's typo ``MULTIPLE_BROKEN_SEPARATOR``).
    multiple_broker_separator: str = ""
    default_queue: str = "machinery_tasks"
    result_backend: str = "sqlite:///machinery.db"
    #: Seconds results are kept; 0 means the default (3600). Reloadable.
    results_expire_in: int = 3600
    lock: str = ""
    eager: bool = False
    no_unix_signals: bool = False
    amqp: AMQPConfig = field(default_factory=AMQPConfig)
    sqs: SQSConfig = field(default_factory=SQSConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    gcppubsub: GCPPubSubConfig = field(default_factory=GCPPubSubConfig)
    mongodb: MongoDBConfig = field(default_factory=MongoDBConfig)
    dynamodb: DynamoDBConfig = field(default_factory=DynamoDBConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    sqlite: SQLiteConfig = field(default_factory=SQLiteConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)

    # ---- runtime state (not dataclass fields: invisible to eq, fields(), asdict(), replace()) ----

    def __post_init__(self) -> None:
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._mutex = threading.RLock()
        self._listeners: list[ReloadListener] = []
        self._source: str | None = None
        self._file_values: dict[_Path, Any] = {}
        self._file_digest = b""
        self._reloader: _Reloader | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)
        self._init_runtime()

    def __copy__(self) -> Config:
        return self.snapshot()

    def __deepcopy__(self, memo: dict[int, Any]) -> Config:
        return self.snapshot()

    def __repr__(self) -> str:
        with self._mutex:
            return _safe_repr(self)

    def __enter__(self) -> Config:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_reloading()

    # ---- loading ----

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """A Config from Machinery's environment variables (``os.environ`` by default), validated.

        Raises :class:`~machinery.errors.ConfigError` naming the variable and the expected form.
        """
        env: Mapping[str, str] = os.environ if environ is None else environ
        values: dict[_Path, Any] = {}
        for spec in _SPECS:
            found: list[tuple[str, Any]] = []
            for name in spec.env:
                if name in env:
                    is_set, value = _env_value(spec, name, env[name])
                    if is_set:
                        found.append((name, value))
            if not found:
                continue
            name, value = found[0]
            for other, other_value in found[1:]:
                if other_value != value:
                    logger.warning(
                        "Environment variables %s and %s are both set and differ; using %s", name, other, name
                    )
            values[spec.path] = value
        config = cls()
        _apply_values(config, values)
        config.validate()
        return config

    @classmethod
    def from_yaml(
        cls, path: str | os.PathLike[str], reload: bool = False, *, reload_interval: float = 1.0
    ) -> Config:
        """A Config from a YAML file in Machinery's format, validated.

        With ``reload=True`` a daemon thread checks the file every ``reload_interval`` seconds and applies
        the fields that are safe to change at run time (see the module docs); stop it with
        :meth:`stop_reloading`. Needs PyYAML (``pip install 'machinery-core[yaml]'``).
        """
        source = os.path.abspath(os.fspath(path))
        data = _read_file(source)
        config = cls()
        _apply_values(config, _parse_yaml(data, source))
        try:
            config.validate()
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        config._source = source
        config._file_values = _values_of(config)
        config._file_digest = _digest(data)
        if reload:
            config.start_reloading(reload_interval)
        return config

    # ---- validation ----

    def validate(self) -> None:
        """Raise :class:`~machinery.errors.ConfigError` listing every invalid value and how to fix it."""
        with self._mutex:
            problems = _problems(self)
        if len(problems) == 1:
            raise ConfigError(f"Invalid configuration: {problems[0]}")
        if problems:
            raise ConfigError("Invalid configuration:\n  - " + "\n  - ".join(problems))

    # ---- safe views ----

    def redacted(self) -> dict[str, Any]:
        """The config as a plain nested dict that is safe to log or print: URLs through ``redact_url``,
        password-like fields as ``***``, clients as their type name."""
        with self._mutex:
            out: dict[str, Any] = {}
            for f in fields(self):
                value = getattr(self, f.name)
                if is_dataclass(value) and not isinstance(value, type):
                    out[f.name] = {
                        sf.name: _plain(_display(sf.name, getattr(value, sf.name))) for sf in fields(value)
                    }
                else:
                    out[f.name] = _plain(_display(f.name, value))
            return out

    def snapshot(self) -> Config:
        """A detached copy taken under the reload lock: a consistent view of every field at one moment.

        Sections and their dicts are copied; client objects are shared. No watcher, no listeners.
        """
        with self._mutex:
            kwargs: dict[str, Any] = {}
            for f in fields(self):
                value = getattr(self, f.name)
                if is_dataclass(value) and not isinstance(value, type):
                    value = replace(
                        value,
                        **{
                            sf.name: _copy_value(getattr(value, sf.name))
                            for sf in fields(value)
                            if sf.init and sf.name != "client"
                        },
                    )
                else:
                    value = _copy_value(value)
                kwargs[f.name] = value
            return type(self)(**kwargs)

    # ---- live reload ----

    @property
    def source(self) -> str | None:
        """The YAML file this config was loaded from (absolute path), if any."""
        return self._source

    @property
    def reloading(self) -> bool:
        """True while the file watcher thread runs."""
        reloader = self._reloader
        return reloader is not None and reloader.is_alive()

    def start_reloading(self, interval: float = 1.0) -> None:
        """Watch the YAML file this config came from (``from_yaml(path, reload=True)`` calls this)."""
        source = self._require_source()
        if not (isinstance(interval, int | float) and math.isfinite(interval) and interval > 0):
            raise ConfigError(f"reload_interval must be a positive number of seconds; got {interval!r}")
        with self._mutex:
            if self.reloading:
                return
            self._reloader = _Reloader(self, source, float(interval))
            self._reloader.start()

    def stop_reloading(self, timeout: float | None = 5.0) -> None:
        """Stop the file watcher (idempotent; safe to call from a listener)."""
        with self._mutex:
            reloader, self._reloader = self._reloader, None
        if reloader is not None:
            reloader.stop(timeout)

    def on_reload(self, callback: ReloadListener) -> Callable[[], None]:
        """Call ``callback(event)`` after every processed file change (in the watcher thread, or in the
        thread calling :meth:`reload`). Exceptions are logged, not raised. Returns an unsubscribe function.
        """
        with self._mutex:
            self._listeners.append(callback)

        def unsubscribe() -> None:
            with self._mutex:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return unsubscribe

    def reload(self) -> ReloadEvent:
        """Re-read the YAML file now and apply what is safe (as the watcher does). A broken file logs a
        WARNING, changes nothing and gives an event with ``error`` set. Needs a config from :meth:`from_yaml`.
        """
        source = self._require_source()
        try:
            data = _read_file(source)
        except ConfigError as exc:
            return self._reload_failed(source, str(exc), b"")
        return self._apply_file(data)

    def _require_source(self) -> str:
        if self._source is None:
            raise ConfigError(
                "This Config was not loaded from a YAML file: use Config.from_yaml(path, reload=True)"
            )
        return self._source

    def _reload_failed(self, source: str, error: str, digest: bytes) -> ReloadEvent:
        with self._mutex:
            if digest:
                self._file_digest = digest  # do not warn again for the same broken bytes
            listeners = list(self._listeners)
        logger.warning("Could not reload %s: %s; keeping the running configuration", source, error)
        event = ReloadEvent(path=source, error=error)
        _notify(listeners, event)
        return event

    def _merge_file(
        self, data: bytes, source: str, digest: bytes
    ) -> tuple[dict[_Path, tuple[Any, Any]], dict[_Path, tuple[Any, Any]], list[ReloadListener]]:
        """Parse and validate ``data``, then apply its safe changes under the lock (raises ConfigError)."""
        if not data.strip():
            raise ConfigError("the file is empty")
        fresh = type(self)()
        _apply_values(fresh, _parse_yaml(data, source))
        fresh.validate()
        new_file = _values_of(fresh)
        with self._mutex:
            live = _values_of(self)
            applied: dict[_Path, tuple[Any, Any]] = {}
            restart: dict[_Path, tuple[Any, Any]] = {}
            for spec in _SPECS:
                path = spec.path
                new = new_file[path]
                if new == self._file_values.get(path, _MISSING) or new == live[path]:
                    continue
                (applied if spec.reload else restart)[path] = (live[path], new)
            if applied:
                candidate = self.snapshot()
                for path, (_, new) in applied.items():
                    _set_value(candidate, path, new)
                candidate.validate()
                for path, (_, new) in applied.items():
                    _set_value(self, path, new)
            self._file_values = new_file
            self._file_digest = digest
            return applied, restart, list(self._listeners)

    def _apply_file(self, data: bytes) -> ReloadEvent:
        source = self._require_source()
        digest = _digest(data)
        try:
            applied, restart, listeners = self._merge_file(data, source, digest)
        except ConfigError as exc:
            # Outside the lock: listeners may take time or touch the config from other threads.
            return self._reload_failed(source, str(exc), digest)
        for path, (old, new) in applied.items():
            logger.info("Config %s changed in %s: %r -> %r (applied)", _dotted(path), source, old, new)
        shown: dict[str, tuple[Any, Any]] = {}
        for path, (old, new) in restart.items():
            name = _dotted(path)
            shown[name] = (_display(path[-1], old), _display(path[-1], new))
            logger.warning(
                "field %s changed in %s; restart to apply (running: %r, file: %r)", name, source, *shown[name]
            )
        event = ReloadEvent(
            path=source,
            applied={_dotted(path): change for path, change in applied.items()},
            restart_required=shown,
        )
        _notify(listeners, event)
        return event


# --------------------------------------------------------------------------------------------------------
# Field table: one row per leaf field with its env names, YAML keys, type and reload safety.

_Path = tuple[str, ...]
_Kind = Literal["str", "int", "float", "bool", "opt_int", "args", "binding_args"]
_MISSING: Any = object()


@dataclass(frozen=True)
class _Spec:
    path: _Path
    kind: _Kind
    env: tuple[str, ...]
    yaml: tuple[str, ...]
    reload: bool = False

    @property
    def dotted(self) -> str:
        return _dotted(self.path)

    @property
    def section(self) -> str:
        return self.path[0] if len(self.path) == 2 else ""

    @property
    def label(self) -> str:
        """``redis.idle_timeout (YAML redis.max_idle_timeout, env REDIS_IDLE_TIMEOUT)``."""
        yaml_key = f"{self.section}.{self.yaml[0]}" if self.section else self.yaml[0]
        env = min(self.env, key=len)
        hint = f"env {env}" if yaml_key == self.dotted else f"YAML {yaml_key}, env {env}"
        return f"{self.dotted} ({hint})"


def _dotted(path: _Path) -> str:
    return ".".join(path)


def _top(name: str, kind: _Kind, *env: str, reload: bool = False) -> _Spec:
    return _Spec((name,), kind, env, (name,), reload)


def _go(
    section: str,
    name: str,
    kind: _Kind,
    *tags: str,
    prefix: str = "",
    yaml: tuple[str, ...] = (),
    reload: bool = False,
) -> _Spec:
    """A nested Machinery field: each envconfig tag is accepted with and without the struct prefix."""
    struct = prefix or section.upper()
    env = tuple(n for tag in tags for n in (f"{struct}_{tag}", tag))
    return _Spec((section, name), kind, env, yaml or (name,), reload)


def _py(section: str, name: str, kind: _Kind, *aliases: str, reload: bool = False) -> _Spec:
    """A Python addition: ``MACHINERY_<SECTION>_<NAME>``."""
    return _Spec((section, name), kind, (f"MACHINERY_{section}_{name}".upper(), *aliases), (name,), reload)


_SPECS: tuple[_Spec, ...] = (
    _top("broker", "str", "BROKER"),
    _top("multiple_broker_separator", "str", "MULTIPLE_BROKER_SEPARATOR", "MULTIPLE_BROKEN_SEPARATOR"),
    _top("default_queue", "str", "DEFAULT_QUEUE"),
    _top("result_backend", "str", "RESULT_BACKEND"),
    _top("results_expire_in", "int", "RESULTS_EXPIRE_IN", reload=True),
    _top("lock", "str", "LOCK"),
    _top("eager", "bool", "MACHINERY_EAGER"),
    _top("no_unix_signals", "bool", "NO_UNIX_SIGNALS"),
    # AMQP
    _go("amqp", "exchange", "str", "AMQP_EXCHANGE"),
    _go("amqp", "exchange_type", "str", "AMQP_EXCHANGE_TYPE"),
    _go("amqp", "queue_declare_args", "args", "AMQP_QUEUE_DECLARE_ARGS"),
    _go("amqp", "queue_binding_args", "binding_args", "AMQP_QUEUE_BINDING_ARGS"),
    _go("amqp", "binding_key", "str", "AMQP_BINDING_KEY"),
    _go("amqp", "prefetch_count", "int", "AMQP_PREFETCH_COUNT"),
    _go("amqp", "auto_delete", "bool", "AMQP_AUTO_DELETE"),
    _go("amqp", "delayed_queue", "str", "AMQP_DELAYED_QUEUE"),
    # SQS
    _go(
        "sqs",
        "wait_time_seconds",
        "int",
        "SQS_WAIT_TIME_SECONDS",
        yaml=("receive_wait_time_seconds", "wait_time_seconds"),
        reload=True,
    ),
    _go(
        "sqs",
        "visibility_timeout",
        "opt_int",
        "SQS_VISIBILITY_TIMEOUT",
        yaml=("receive_visibility_timeout", "visibility_timeout"),
        reload=True,
    ),
    _go(
        "sqs",
        "visibility_heartbeat",
        "bool",
        "SQS_VISIBILITY_HEARTBEAT",
        yaml=("visibility_hearth_beat", "visibility_heartbeat"),
        reload=True,
    ),
    # Redis
    _go("redis", "max_idle", "int", "REDIS_MAX_IDLE"),
    _go("redis", "max_active", "int", "REDIS_MAX_ACTIVE"),
    _go("redis", "idle_timeout", "int", "REDIS_IDLE_TIMEOUT", yaml=("max_idle_timeout", "idle_timeout")),
    _go("redis", "wait", "bool", "REDIS_WAIT"),
    _go("redis", "read_timeout", "int", "REDIS_READ_TIMEOUT"),
    _go("redis", "write_timeout", "int", "REDIS_WRITE_TIMEOUT"),
    _go("redis", "connect_timeout", "int", "REDIS_CONNECT_TIMEOUT"),
    _go("redis", "normal_tasks_poll_period", "int", "REDIS_NORMAL_TASKS_POLL_PERIOD", reload=True),
    _go("redis", "delayed_tasks_poll_period", "int", "REDIS_DELAYED_TASKS_POLL_PERIOD", reload=True),
    _go("redis", "delayed_tasks_key", "str", "REDIS_DELAYED_TASKS_KEY"),
    _go("redis", "client_name", "str", "REDIS_CLIENT_NAME"),
    _go("redis", "master_name", "str", "REDIS_MASTER_NAME"),
    _go(
        "redis",
        "cluster_mode",
        "bool",
        "REDIS_CLUSTER_MODE",
        "REDIS_CLUSTER_ENABLED",
        yaml=("cluster_mode", "cluster_enabled"),
    ),
    _go("redis", "sentinel_password", "str", "REDIS_SENTINEL_PASSWORD"),
    # DynamoDB
    _go("dynamodb", "task_states_table", "str", "TASK_STATES_TABLE"),
    _go("dynamodb", "group_metas_table", "str", "GROUP_METAS_TABLE"),
    # Python additions
    _py("tls", "ca_file", "str", "TLS_CA_FILE"),
    _py("tls", "cert_file", "str", "TLS_CERT_FILE"),
    _py("tls", "key_file", "str", "TLS_KEY_FILE"),
    _py("tls", "insecure_skip_verify", "bool", "TLS_INSECURE_SKIP_VERIFY"),
    _py("redis", "lease", "float"),
    _py("redis", "heartbeat", "float"),
    _py("redis", "priority", "bool"),
    _py("redis", "delayed_tasks_mover", "bool"),
    _py("redis", "go_compatible_chords", "bool"),
    _py("sqlite", "lease", "float", reload=True),
    _py("sqlite", "renew", "float", reload=True),
    _py("worker", "default_concurrency", "int", reload=True),
    _py("worker", "shutdown_grace", "float", reload=True),
    _py("worker", "unregistered_requeue_limit", "int", reload=True),
    _py("worker", "unregistered_requeue_seconds", "float", reload=True),
    _py("worker", "store_intermediate_states", "bool", reload=True),
    _py("worker", "poll_timeout", "float", reload=True),
    _py("worker", "prefetch_multiplier", "int", reload=True),
    _py("mongodb", "database", "str"),
    _py("gcppubsub", "max_extension", "float"),
)

_SPEC_BY_PATH: dict[_Path, _Spec] = {spec.path: spec for spec in _SPECS}
_DEFAULTS = Config()
#: Config fields that are sub-config sections (``amqp``, ``redis``...): YAML mappings of their own.
_SECTIONS: tuple[str, ...] = tuple(f.name for f in fields(Config) if is_dataclass(getattr(_DEFAULTS, f.name)))
_YAML_KEYS: dict[str, dict[str, _Spec]] = {section: {} for section in ("", *_SECTIONS)}
for _spec in _SPECS:
    for _key in _spec.yaml:
        _YAML_KEYS[_spec.section][_key] = _spec
del _spec, _key

#: Dotted names of the fields a live reload applies at run time (all others need a restart).
RELOADABLE_FIELDS: frozenset[str] = frozenset(spec.dotted for spec in _SPECS if spec.reload)


def _get_value(config: Config, path: _Path) -> Any:
    target: Any = config
    for name in path:
        target = getattr(target, name)
    return target


def _set_value(config: Config, path: _Path, value: Any) -> None:
    target: Any = config if len(path) == 1 else getattr(config, path[0])
    setattr(target, path[-1], _copy_value(value))


def _apply_values(config: Config, values: Mapping[_Path, Any]) -> None:
    for path, value in values.items():
        _set_value(config, path, value)


def _values_of(config: Config) -> dict[_Path, Any]:
    return {spec.path: _copy_value(_get_value(config, spec.path)) for spec in _SPECS}


def _copy_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _copy_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_value(item) for item in value]
    return value


def _plain(value: Any) -> Any:
    return repr(value) if isinstance(value, _Opaque) else value


def _shown(spec: _Spec, value: Any) -> str:
    """A value for an error message: secret fields are masked whatever their type."""
    if _SECRET_FIELD_RE.search(spec.path[-1]):
        return "'***'"
    text = repr(_display(spec.path[-1], value))
    return text if len(text) <= 80 else text[:77] + "..."


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# --------------------------------------------------------------------------------------------------------
# Environment

_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})
_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")

_ENV_FORMS: dict[_Kind, str] = {
    "str": "text",
    "int": "a whole number, e.g. 3600",
    "float": "a number, e.g. 30 or 2.5",
    "bool": "true/false, 1/0 or yes/no",
    "opt_int": "a whole number, or empty for the queue's own setting",
    "args": "k:v,k:v (e.g. x-max-priority:10) or a JSON object",
    "binding_args": "k:v,k:v (e.g. image-type:png,x-match:any) or a JSON object",
}


def _env_value(spec: _Spec, name: str, raw: str) -> tuple[bool, Any]:
    """``(is_set, value)`` for env var ``name``; an empty number/boolean is "not set"."""
    if spec.kind == "str":
        return True, raw
    text = raw.strip()

    def fail(extra: str = "") -> ConfigError:
        shown = "'***'" if _SECRET_FIELD_RE.search(spec.path[-1]) else repr(raw)
        return ConfigError(
            f"Environment variable {name}={shown} is not valid{extra}: expected {_ENV_FORMS[spec.kind]}"
        )

    if spec.kind in ("args", "binding_args"):
        return True, _parse_args(text, name, coerce=spec.kind == "args", fail=fail)
    if not text:
        return (True, None) if spec.kind == "opt_int" else (False, None)
    if spec.kind == "bool":
        lowered = text.lower()
        if lowered in _TRUE:
            return True, True
        if lowered in _FALSE:
            return True, False
        raise fail()
    if spec.kind in ("int", "opt_int"):
        if not _INT_RE.fullmatch(text):
            raise fail()
        return True, int(text)
    # float
    if not _FLOAT_RE.fullmatch(text):
        raise fail()
    return True, float(text)


def _parse_args(text: str, name: str, *, coerce: bool, fail: Callable[[str], ConfigError]) -> dict[str, Any]:
    if not text:
        return {}
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise fail(f" (bad JSON: {exc})") from None
        if not isinstance(obj, dict):
            raise fail(" (JSON must be an object)")
        return obj
    out: dict[str, Any] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition(":")
        if not sep or not key.strip():
            raise fail(f" (item {item!r} has no 'key:value')")
        value = value.strip()
        out[key.strip()] = _scalar(value) if coerce else value
    return out


def _scalar(text: str) -> Any:
    """``"10"`` → 10, ``"0.5"`` → 0.5, ``"true"`` → True; anything else stays a string."""
    if _INT_RE.fullmatch(text):
        return int(text)
    if _FLOAT_RE.fullmatch(text):
        number = float(text)
        return number if math.isfinite(number) else text
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


# --------------------------------------------------------------------------------------------------------
# YAML


def _yaml_module() -> Any:
    try:
        return importlib.import_module("yaml")
    except ImportError as exc:
        raise ConfigError(f"Reading a YAML config needs PyYAML: {YAML_EXTRA_HINT}") from exc


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise ConfigError(f"Config file {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"Config file {path} could not be read: {exc.strerror or exc}") from None


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _parse_yaml(data: bytes, source: str) -> dict[_Path, Any]:
    """The values a YAML document sets, by field path. Unknown keys are logged; bad types raise."""
    yaml = _yaml_module()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    loader = getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader
    try:
        doc = yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {_yaml_error_text(exc)}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(
            f"{source}: expected a mapping of settings at the top level (e.g. 'broker: redis://...'), "
            f"got {_type_name(doc)}"
        )
    values: dict[_Path, Any] = {}
    origin: dict[_Path, str] = {}
    for key, value in doc.items():
        name = str(key)
        if name in _SECTIONS:
            if value is None:
                continue  # "amqp:" with nothing under it: keep the defaults
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{source}: '{name}' must be a mapping of settings (indented 'key: value' lines), "
                    f"got {_type_name(value)}"
                )
            for sub_key, sub_value in value.items():
                _take(values, origin, name, str(sub_key), sub_value, source)
        else:
            _take(values, origin, "", name, value, source)
    return values


def _yaml_error_text(exc: Any) -> str:
    """A YAML error without the source snippet PyYAML prints (the line may hold a password)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is not None and problem:
        context = getattr(exc, "context", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        return f"{problem}{' ' + context if context else ''} at {where}"
    return redact_url(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def _take(
    values: dict[_Path, Any], origin: dict[_Path, str], section: str, key: str, value: Any, source: str
) -> None:
    spec = _YAML_KEYS[section].get(key)
    where = f"{section}.{key}" if section else key
    if spec is None:
        known = list(_YAML_KEYS[section]) + (list(_SECTIONS) if not section else [])
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {f'{section}.' if section else ''}{close[0]}?)" if close else ""
        logger.warning("%s: unknown key %r ignored%s", source, where, hint)
        return
    converted = _yaml_value(spec, value, where, source)
    if spec.path in values and values[spec.path] != converted:
        raise ConfigError(
            f"{source}: {origin[spec.path]} and {where} both set {spec.dotted} to different values; keep one"
        )
    values[spec.path] = converted
    origin[spec.path] = where


def _yaml_value(spec: _Spec, value: Any, where: str, source: str) -> Any:
    kind = spec.kind
    if kind in ("args", "binding_args"):
        if value is None:
            return {}
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        expected = "a mapping, e.g. {x-max-priority: 10}"
    elif kind == "str":
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        expected = "a string"
    elif kind == "bool":
        if isinstance(value, bool):
            return value
        expected = "true or false"
    elif kind in ("int", "opt_int"):
        if kind == "opt_int" and value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        expected = "a whole number" + (" or null" if kind == "opt_int" else "")
    else:  # float
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        expected = "a number"
    raise ConfigError(
        f"{source}: {where} must be {expected}, got {_shown(spec, value)} ({_type_name(value)})"
    )


# --------------------------------------------------------------------------------------------------------
# Validation

_TYPE_CHECKS: dict[_Kind, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an int"),
    "float": (
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
        "a finite number",
    ),
    "bool": (lambda v: isinstance(v, bool), "a bool"),
    "opt_int": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)), "an int or None"),
    "args": (lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v), "a dict with str keys"),
    "binding_args": (
        lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
        "a dict with str keys",
    ),
}


def _problems(config: Config) -> list[str]:
    problems: list[str] = []
    typed_ok: set[_Path] = set()
    for spec in _SPECS:
        value = _get_value(config, spec.path)
        check, expected = _TYPE_CHECKS[spec.kind]
        if check(value):
            typed_ok.add(spec.path)
        else:
            problems.append(
                f"{spec.label} must be {expected}; got {_shown(spec, value)} ({_type_name(value)})"
            )

    def need(path: _Path, ok: Callable[[Any], bool], requirement: str) -> None:
        if path in typed_ok and not ok(_get_value(config, path)):
            spec = _SPEC_BY_PATH[path]
            problems.append(f"{spec.label} {requirement}; got {_shown(spec, _get_value(config, path))}")

    def at_least(path: _Path, low: float, meaning: str = "") -> None:
        need(path, lambda v: v >= low, f"must be >= {low:g}{meaning}")

    at_least(("results_expire_in",), 0, " seconds (0 means the default, 3600)")
    need(("default_queue",), bool, "must not be empty (e.g. machinery_tasks)")
    if not config.eager:
        need(
            ("broker",),
            bool,
            "must be set to a broker URL, e.g. redis://localhost:6379/0 or sqlite:///machinery.db",
        )
    separator = config.multiple_broker_separator
    if separator and isinstance(separator, str) and isinstance(config.broker, str):
        need(
            ("broker",),
            lambda v: all(part.strip() for part in v.split(separator)),
            f"has an empty URL between the multiple_broker_separator {separator!r} separators",
        )
    at_least(("amqp", "prefetch_count"), 0, " (0 means unlimited)")
    need(("sqs", "wait_time_seconds"), lambda v: 0 <= v <= 20, "must be between 0 and 20 seconds (SQS limit)")
    need(
        ("sqs", "visibility_timeout"),
        lambda v: v is None or 0 <= v <= 43200,
        "must be empty/None (the queue's setting) or between 0 and 43200 seconds (SQS limit)",
    )
    for name in (
        "max_idle",
        "max_active",
        "idle_timeout",
        "read_timeout",
        "write_timeout",
        "connect_timeout",
        "normal_tasks_poll_period",
        "delayed_tasks_poll_period",
    ):
        at_least(("redis", name), 0)
    need(("redis", "delayed_tasks_key"), bool, "must not be empty (Machinery uses delayed_tasks)")
    need(("dynamodb", "task_states_table"), bool, "must not be empty (e.g. task_states)")
    need(("dynamodb", "group_metas_table"), bool, "must not be empty (e.g. group_metas)")
    for name in ("ca_file", "cert_file", "key_file"):
        need(("tls", name), lambda v: not v or os.path.isfile(v), "names a file that does not exist")
    if config.tls.key_file and not config.tls.cert_file:
        problems.append(
            "tls.key_file is set without tls.cert_file (env MACHINERY_TLS_CERT_FILE): set both, or put "
            "the key in the certificate file"
        )
    need(("sqlite", "lease"), lambda v: v > 0, "must be > 0 seconds")
    need(("sqlite", "renew"), lambda v: v > 0, "must be > 0 seconds")
    if {("sqlite", "lease"), ("sqlite", "renew")} <= typed_ok and config.sqlite.renew >= config.sqlite.lease:
        problems.append(
            f"sqlite.renew ({config.sqlite.renew:g}) must be shorter than sqlite.lease "
            f"({config.sqlite.lease:g}), or leases expire before they are renewed"
        )
    need(("worker", "default_concurrency"), lambda v: v >= 1, "must be >= 1")
    at_least(("worker", "shutdown_grace"), 0, " seconds")
    at_least(("worker", "unregistered_requeue_limit"), 0)
    at_least(("worker", "unregistered_requeue_seconds"), 0, " seconds")
    at_least(("gcppubsub", "max_extension"), 0, " seconds")
    return problems


# --------------------------------------------------------------------------------------------------------
# The file watcher


def _notify(listeners: list[ReloadListener], event: ReloadEvent) -> None:
    for listener in listeners:
        try:
            listener(event)
        except Exception:
            logger.exception("Config reload listener %r failed", listener)


class _Reloader(threading.Thread):
    """Checks the file every ``interval`` s; holds the Config weakly, so a dropped Config stops it."""

    def __init__(self, config: Config, path: str, interval: float) -> None:
        super().__init__(name=f"machinery-config-reload:{os.path.basename(path)}", daemon=True)
        self._config_ref = weakref.ref(config)
        self._path = path
        self._interval = interval
        self._settle = min(0.1, interval / 2)
        self._halt = threading.Event()
        self._last_error = ""

    def stop(self, timeout: float | None) -> None:
        self._halt.set()
        if self is not threading.current_thread() and self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        while not self._halt.wait(self._interval):
            config = self._config_ref()
            if config is None:
                return
            try:
                self._check(config)
            except Exception:  # never let the watcher die silently
                logger.exception("Config watcher for %s failed; will try again", self._path)
            del config

    def _check(self, config: Config) -> None:
        try:
            data = _read_file(self._path)
        except ConfigError as exc:
            if str(exc) != self._last_error:
                self._last_error = str(exc)
                logger.warning("%s; keeping the running configuration", exc)
            return
        self._last_error = ""
        if _digest(data) == config._file_digest:
            return
        # A writer may be half-way through: apply only what stays the same for a short moment.
        if self._halt.wait(self._settle):
            return
        try:
            again = _read_file(self._path)
        except ConfigError:
            return
        if again == data and not self._halt.is_set():
            config._apply_file(data)
