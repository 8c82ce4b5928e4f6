"""Configuration: Machinery's ``Config`` fields, in snake_case, with its env and YAML names.

Every setting is declared once, with :func:`machinery.settings.setting`, in the section that owns it: the
top-level fields and the ``tls``, ``sqlite`` and ``worker`` sections here, each transport's section in its
plugin (``redis`` in machinery-redis, ``amqp`` in machinery-amqp), returned from the plugin's
``machinery_settings()`` hook. The env and YAML tables, the validation and :data:`RELOADABLE_FIELDS` are
derived from those declarations (see :mod:`machinery.settings`). ``config.redis`` works as before;
``RedisSettings.of(config)`` gives the same section typed.

Loading
-------
- :meth:`Config.from_env` reads Machinery's environment variables (``BROKER``, ``DEFAULT_QUEUE``, and, with
  their plugins installed, ``AMQP_EXCHANGE``, ``REDIS_MAX_IDLE``, ...). Nested ones are also accepted with
  the Go struct prefix, as envconfig does (``AMQP_AMQP_EXCHANGE``, ``REDIS_REDIS_MAX_IDLE``,
  ``DYNAMODB_TASK_STATES_TABLE``); the prefixed name wins when both are set. Go's
  ``MULTIPLE_BROKEN_SEPARATOR`` typo is accepted next to ``MULTIPLE_BROKER_SEPARATOR`` (which wins). Settings
  Machinery never had are read from ``MACHINERY_*`` names (table below). Booleans take ``true/false``,
  ``1/0``, ``yes/no`` (also ``t/f``, ``on/off``), case-insensitive. An empty value for a number or boolean
  means "not set" (an empty ``SQS_VISIBILITY_TIMEOUT`` means "the queue's own setting"). Dict settings
  (``AMQP_QUEUE_DECLARE_ARGS``) take ``k:v,k:v`` or a JSON object. Loading the environment never turns TLS
  on (Go's #517): TLS is used when a URL scheme asks for it (``rediss://``, ``amqps://``...), the ``tls``
  section only supplies the files.
- :meth:`Config.from_yaml` reads Machinery's YAML keys, of any file size (Go read at most 1000 bytes),
  including Go's spellings (``receive_wait_time_seconds``, ``visibility_hearth_beat`` (sic), and the
  plugins' own, such as redis's ``max_idle_timeout``). A section that is missing keeps its defaults (Go set
  ``AMQP`` to nil). Unknown keys are logged as warnings, wrong types raise
  :class:`~machinery.errors.ConfigError` naming the key. Needs PyYAML:
  ``pip install 'machinery-core[yaml]'``.
- A YAML section (or ``MACHINERY_<SECTION>_*`` variables) of a plugin that is not installed is kept as raw
  values in :attr:`Config.unclaimed` and reported in one warning, with the package to install when it is
  a first-party one. (Go's bare names such as ``REDIS_MAX_IDLE`` cannot be told apart from other
  programs' variables, so they are not reported.)
- Both call :meth:`Config.validate`, which raises one ``ConfigError`` listing every problem and how to fix
  it.

Result lifetime
---------------
``results_expire_in`` (``RESULTS_EXPIRE_IN``): seconds results and group records stay after their last
write. 0 means the default of 3600, as in Go; :data:`NEVER_EXPIRE` (-1) keeps them until purged (every
backend then writes no expiry at all); anything below -1 is refused.

Core settings that Machinery never had (plugins list theirs in their README)
------------------------------------------------------------------------------
==================================  ======================================  ==========================
field                               env (first name wins)                   YAML
==================================  ======================================  ==========================
eager                               MACHINERY_EAGER                         eager
timezone                            MACHINERY_TIMEZONE                      timezone
signing_keys (machinery.signing)    MACHINERY_SIGNING_KEYS (comma-sep.)     signing_keys: [...]
signing_max_age                     MACHINERY_SIGNING_MAX_AGE               signing_max_age
tls.ca_file / cert_file / key_file  MACHINERY_TLS_CA_FILE, TLS_CA_FILE ...  tls: {ca_file: ...}
tls.insecure_skip_verify            MACHINERY_TLS_INSECURE_SKIP_VERIFY,     tls: {insecure_skip_verify}
                                    TLS_INSECURE_SKIP_VERIFY
sqlite.lease / renew                MACHINERY_SQLITE_LEASE / _RENEW         sqlite: {lease, renew}
worker.<name>                       MACHINERY_WORKER_<NAME>                 worker: {<name>: ...}
events.enabled / record_args /      MACHINERY_EVENTS_ENABLED ...            events: {enabled: ...}
max_events (machinery.events)
<plugin section>.<name>             MACHINERY_<SECTION>_<NAME>              <section>: {<name>: ...}
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

Safe at run time (:data:`RELOADABLE_FIELDS`, the settings declared with ``reload=True``): the values that
brokers, backends and workers read each time they use them (plugins must not cache these):

- ``results_expire_in`` (next result written)
- ``sqs.wait_time_seconds``, ``sqs.visibility_timeout``, ``sqs.visibility_heartbeat`` (next receive /
  next task)
- ``redis.normal_tasks_poll_period``, ``redis.delayed_tasks_poll_period`` (next poll; machinery-redis)
- ``sqlite.lease``, ``sqlite.renew`` (next lease taken / renewed)
- ``events.record_args`` (next event)
- ``worker.*`` (next task; ``default_concurrency`` for workers created afterwards, ``shutdown_grace`` at the
  next stop)

Restart needed: everything that chooses or builds a connection, or names things that already exist on
the server: ``broker``, ``multiple_broker_separator``, ``result_backend``, ``lock``, ``default_queue``,
``eager``, ``no_unix_signals``, all of ``amqp.*`` (exchange, queues, bindings and QoS are declared on
connect), ``redis`` pool/connection settings, ``redis.delayed_tasks_key`` (would orphan scheduled tasks),
``redis.cluster_mode``, ``redis.master_name``, ``redis.sentinel_password``, ``dynamodb.*`` tables,
``tls.*`` and ``mongodb.database`` (plugins say which of theirs reload).

Secrets
-------
``repr(config)``, :meth:`Config.redacted` and every log line here pass URLs through
:func:`machinery.redact.redact_url` and show ``***`` for password-like fields (``redis.sentinel_password``)
and only the type of client objects.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import logging
import math
import os
import ssl
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, fields, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import plugins
from .errors import ConfigError
from .redact import redact_url
from .settings import (
    Check,
    Path,
    Section,
    Spec,
    above,
    at_least,
    check_section_class,
    not_empty,
    plain,
    safe_items,
    safe_value,
    setting,
    specs_of,
    type_name,
)

__all__ = [
    "NEVER_EXPIRE",
    "RELOADABLE_FIELDS",
    "Config",
    "EventsConfig",
    "ReloadEvent",
    "ReloadListener",
    "SQLiteConfig",
    "Section",
    "TLSConfig",
    "WorkerConfig",
    "registered_sections",
    "reloadable_fields",
]

logger = logging.getLogger(__name__)

YAML_EXTRA_HINT = "pip install 'machinery-core[yaml]'"

#: ``Config.results_expire_in`` value that keeps results until they are purged: no backend writes an
#: expiry (no TTL, no ``delete_at``, memcached expiry 0). 0 keeps meaning the default of 3600 s, as in Go.
NEVER_EXPIRE = -1

# --------------------------------------------------------------------------------------------------------
# Core sections

_EXISTING_FILE = Check(lambda v: not v or os.path.isfile(v), "names a file that does not exist")


def _usable_signing_keys(keys: list[str]) -> bool:
    from .signing import keys_problem  # signing imports the codec; config stays light to import

    return keys_problem(keys) is None


_SIGNING_KEYS = Check(
    _usable_signing_keys,
    "must each be at least 16 bytes (a string, or base64: and the base64 of raw bytes), none listed twice",
)


_insecure_warned: set[str] = set()
_insecure_lock = threading.Lock()


def warn_insecure_tls(transport: str) -> None:
    """Log, once per process and transport, that TLS verification is off (``tls.insecure_skip_verify`` or a
    URL parameter that does the same): transports call it whenever they build a connection without it."""
    with _insecure_lock:
        if transport in _insecure_warned:
            return
        _insecure_warned.add(transport)
    logging.getLogger("machinery.tls").warning(
        "%s: TLS verification is OFF (Config.tls.insecure_skip_verify): the server's certificate and host "
        "name are not checked, so anyone on the network path can pose as the server and read or change "
        "every message",
        transport,
    )


@dataclass(repr=False)
class TLSConfig(Section):
    """TLS files for ``rediss://``, ``amqps://`` and friends. Empty means "system defaults".

    These never turn TLS on by themselves: the URL scheme does. Plugins build their context with
    :meth:`ssl_context`.
    """

    name = "tls"

    ca_file: str = setting("", env="TLS_CA_FILE", check=_EXISTING_FILE)
    cert_file: str = setting("", env="TLS_CERT_FILE", check=_EXISTING_FILE)
    key_file: str = setting("", env="TLS_KEY_FILE", check=_EXISTING_FILE)
    insecure_skip_verify: bool = setting(False, env="TLS_INSECURE_SKIP_VERIFY")

    @property
    def configured(self) -> bool:
        """True when anything differs from the system defaults."""
        return bool(self.ca_file or self.cert_file or self.key_file or self.insecure_skip_verify)

    def ssl_context(self, transport: str = "TLS") -> ssl.SSLContext:
        """A client-side ``SSLContext`` with these files (system CAs when ``ca_file`` is empty).

        It verifies the server's certificate and host name, whatever the client library's own defaults;
        with ``insecure_skip_verify`` it does neither, and a warning naming ``transport`` is logged once.
        """
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file or None)
            ctx.verify_mode = ssl.CERT_REQUIRED  # create_default_context's defaults, said explicitly
            ctx.check_hostname = True
            if self.cert_file:
                ctx.load_cert_chain(self.cert_file, self.key_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"TLS files could not be loaded ({exc}); check tls.ca_file / tls.cert_file / tls.key_file "
                "(env MACHINERY_TLS_CA_FILE, MACHINERY_TLS_CERT_FILE, MACHINERY_TLS_KEY_FILE)"
            ) from exc
        if self.insecure_skip_verify:
            warn_insecure_tls(transport)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def problems(self, valid: AbstractSet[str]) -> Iterable[str]:
        if self.key_file and not self.cert_file:
            yield (
                "tls.key_file is set without tls.cert_file (env MACHINERY_TLS_CERT_FILE): set both, or put "
                "the key in the certificate file"
            )


@dataclass(repr=False)
class SQLiteConfig(Section):
    """The built-in ``sqlite://`` broker: lease length and renewal period, in seconds. Reloadable."""

    name = "sqlite"

    lease: float = setting(30.0, reload=True, check=above(0, " seconds"))
    renew: float = setting(10.0, reload=True, check=above(0, " seconds"))

    def problems(self, valid: AbstractSet[str]) -> Iterable[str]:
        if {"lease", "renew"} <= valid and self.renew >= self.lease:
            yield (
                f"sqlite.renew ({self.renew:g}) must be shorter than sqlite.lease ({self.lease:g}), or "
                "leases expire before they are renewed"
            )


@dataclass(repr=False)
class WorkerConfig(Section):
    """Worker defaults (Python additions; Machinery had none of these as settings). All reloadable."""

    name = "worker"

    #: Concurrency used when a worker is created with concurrency 0 (Go: unbounded goroutines).
    default_concurrency: int = setting(8, reload=True, check=at_least(1))
    #: Seconds a stopping worker waits for running tasks before returning the rest to the queue.
    shutdown_grace: float = setting(30.0, reload=True, check=at_least(0, " seconds"))
    #: An unregistered task is requeued at least this many times ...
    unregistered_requeue_limit: int = setting(20, reload=True, check=at_least(0))
    #: ... and for at least this many seconds, before it fails as "not registered".
    unregistered_requeue_seconds: float = setting(60.0, reload=True, check=at_least(0, " seconds"))
    #: A worker holds at most ``concurrency * prefetch_multiplier`` messages. 1 (the default) never
    #: fetches more than free slots (Go #559); more buys throughput with short tasks.
    prefetch_multiplier: int = setting(1, reload=True)
    #: Longest a worker's fetch blocks, so quit() is noticed within this many seconds.
    poll_timeout: float = setting(1.0, reload=True)
    #: Write RECEIVED and STARTED states (Machinery does). Off saves two writes per task.
    store_intermediate_states: bool = setting(True, reload=True)
    #: A message is delivered at most this many times when handling it fails or a worker dies
    #: holding it; then it ends FAILURE and is dead-lettered, naming the reason.
    max_deliveries: int = setting(5, reload=True, check=at_least(1))
    #: ``raise Retry(...)`` (Go's ErrRetryTaskLater) runs a task again at most this many times, unless
    #: the Retry names its own ``max_retries``; separate from the signature's retry_count.
    retry_later_limit: int = setting(100, reload=True, check=at_least(0))
    #: Seconds between a worker's heartbeats in the events store (``machinery inspect workers``); a
    #: worker that missed three is shown as lost.
    heartbeat_interval: float = setting(5.0, reload=True, check=above(0, " seconds"))


@dataclass(repr=False)
class EventsConfig(Section):
    """Worker heartbeats and task events (:mod:`machinery.events`), kept by backends that can."""

    name = "events"

    #: Workers send heartbeats and task events (cheap: batched from a background thread).
    enabled: bool = setting(True)
    #: Task events carry the whole message, arguments included (they may hold secrets): lets the
    #: dashboard show arguments and re-send a failed task. Off by default.
    record_args: bool = setting(False, reload=True)
    #: The store keeps the newest this many task events (they also expire with ``results_expire_in``).
    max_events: int = setting(100_000, check=at_least(1))


# --------------------------------------------------------------------------------------------------------
# Transport sections still in the core, until their plugins take them. Each block is self-contained: to
# move one, cut it into the plugin's settings.py (rename it FooSettings, import from machinery.settings),
# return the class from the plugin's machinery_settings() hook, delete its line in _TRANSITIONAL_SECTIONS
# and add its old name to _MOVED (so "from machinery.config import SQSConfig" keeps working, deprecated).


_TRANSITIONAL_SECTIONS: tuple[type[Section], ...] = ()

#: Section classes that moved to a plugin: old name -> (module, class, distribution).
_MOVED: dict[str, tuple[str, str, str]] = {
    "RedisConfig": ("machinery_redis.settings", "RedisSettings", "machinery-redis"),
    "AMQPConfig": ("machinery_amqp.settings", "AMQPSettings", "machinery-amqp"),
    "GCPPubSubConfig": ("machinery_gcppubsub.settings", "GCPPubSubSettings", "machinery-gcppubsub"),
    "MongoDBConfig": ("machinery_mongodb.settings", "MongoSettings", "machinery-mongodb"),
    "SQSConfig": ("machinery_sqs.settings", "SQSSettings", "machinery-sqs"),
    "DynamoDBConfig": ("machinery_sqs.settings", "DynamoDBSettings", "machinery-sqs"),
}


# --------------------------------------------------------------------------------------------------------
# Which sections exist: the core's, the transitional ones above, and every plugin's machinery_settings()

_CORE_SECTION_NAMES = ("tls", "sqlite", "worker", "events")


def registered_sections() -> dict[str, type[Section]]:
    """Every settings section class by name: the core's, then those the installed plugins declare.

    Plugins are found through their entry points; their ``machinery_settings()`` hook imports only their
    settings module, never their broker.
    """
    found: dict[str, type[Section]] = {name: _CORE_SECTION_TYPES[name] for name in _CORE_SECTION_NAMES}
    for cls in _TRANSITIONAL_SECTIONS:
        found[cls.name] = cls
    for result in plugins.get_plugin_manager().hook.machinery_settings():
        for cls in result:
            _add_section(found, cls)
    return found


def _add_section(found: dict[str, type[Section]], cls: Any) -> None:
    check_section_class(cls)
    where = f"{cls.__module__}.{cls.__qualname__}"
    other = found.get(cls.name)
    if other is not None and other is not cls:
        raise ConfigError(
            f"Two settings sections are named {cls.name!r}: {other.__module__}.{other.__qualname__} and "
            f"{where}; uninstall one of the plugins or rename a section"
        )
    if other is None and hasattr(Config, cls.name):
        raise ConfigError(f"Settings section {where} is named {cls.name!r}, which Config already uses")
    found[cls.name] = cls


def reloadable_fields() -> frozenset[str]:
    """Dotted names of the settings a live reload applies at run time, the installed plugins' included."""
    return _table(_table_key(Config, registered_sections())).reloadable


@dataclass(frozen=True)
class _Table:
    """The rows derived from a set of section classes: what the loaders and validation iterate."""

    specs: tuple[Spec, ...]
    by_path: Mapping[Path, Spec]
    #: section name ("" for the top level) -> YAML key -> row
    yaml_keys: Mapping[str, Mapping[str, Spec]]
    env_names: frozenset[str]
    reloadable: frozenset[str]


_TableKey = tuple[type, tuple[tuple[str, type], ...]]


def _table_key(config_type: type, sections: Mapping[str, type]) -> _TableKey:
    return config_type, tuple(sections.items())


@functools.cache
def _table(key: _TableKey) -> _Table:
    config_type, sections = key
    specs = list(specs_of(config_type))
    yaml_keys: dict[str, dict[str, Spec]] = {"": {}}
    for name, cls in sections:
        yaml_keys[name] = {}
        specs.extend(specs_of(cls))
    for spec in specs:
        for yaml_key in spec.yaml:
            yaml_keys[spec.section][yaml_key] = spec
    return _Table(
        specs=tuple(specs),
        by_path={spec.path: spec for spec in specs},
        yaml_keys=yaml_keys,
        env_names=frozenset(name for spec in specs for name in spec.env),
        reloadable=frozenset(spec.dotted for spec in specs if spec.reload),
    )


def _table_of(config: Config) -> _Table:
    return _table(_table_key(type(config), {n: type(s) for n, s in config.sections().items()}))


# --------------------------------------------------------------------------------------------------------
# ReloadEvent


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


def _is_time_zone(name: str) -> bool:
    from .periodic import zone

    try:
        zone(name)
    except ConfigError:
        return False
    return True


@dataclass(repr=False, eq=False)
class Config:
    """Everything Machinery needs to know. Defaults run with no server (``sqlite://``).

    Deviation from Go Machinery: the default broker and backend are the embedded
    ``sqlite:///machinery.db`` rather than a local RabbitMQ.

    Build one by hand, with :meth:`from_env` or with :meth:`from_yaml` (optionally live-reloading; see the
    module docs for which fields change at run time). ``repr()`` never shows a password.
    Plugin sections are keyword arguments too: ``Config(redis=RedisSettings(lease=60))``; every installed
    plugin's section is present with its defaults otherwise (``config.redis``, typed
    ``RedisSettings.of(config)``). Copies (``copy.copy``/``copy.deepcopy``/:meth:`snapshot`) copy every
    section but share client objects, and never carry the file watcher or listeners.
    """

    broker: str = setting("sqlite:///machinery.db", go_env="BROKER")
    #: Splits ``broker`` into several URLs tried in order (AMQP failover). Env ``MULTIPLE_BROKER_SEPARATOR``
    #: (or Go's typo ``MULTIPLE_BROKEN_SEPARATOR``).
    multiple_broker_separator: str = setting(
        "", go_env=("MULTIPLE_BROKER_SEPARATOR", "MULTIPLE_BROKEN_SEPARATOR")
    )
    default_queue: str = setting(
        "machinery_tasks", go_env="DEFAULT_QUEUE", check=not_empty("machinery_tasks")
    )
    result_backend: str = setting("sqlite:///machinery.db", go_env="RESULT_BACKEND")
    #: Seconds results are kept after their last write; 0 means the default (3600, as in Go);
    #: ``NEVER_EXPIRE`` (-1) keeps them until purged (backends store no expiry at all). Reloadable.
    results_expire_in: int = setting(
        3600,
        go_env="RESULTS_EXPIRE_IN",
        reload=True,
        check=at_least(NEVER_EXPIRE, " seconds (0 means the default, 3600; -1 means never expire)"),
    )
    #: Seconds dead-lettered messages are kept by the built-in brokers (memory://, sqlite://).
    dead_letter_expire_in: int = setting(7 * 24 * 3600, reload=True, check=at_least(1, " seconds"))
    lock: str = setting("", go_env="LOCK")
    eager: bool = setting(False)
    no_unix_signals: bool = setting(False, go_env="NO_UNIX_SIGNALS")
    #: The zone of periodic-task cron specs without a ``CRON_TZ=`` prefix (Go: the machine's local time).
    timezone: str = setting(
        "UTC", check=Check(_is_time_zone, "must be an IANA time zone, e.g. UTC or Europe/Berlin")
    )
    #: Message signing keys (machinery.signing): the first signs, all verify; empty = no signing. Strings, or
    #: ``base64:`` + raw bytes, 16 bytes at least. Env ``MACHINERY_SIGNING_KEYS`` (comma-separated).
    signing_keys: list[str] = setting(factory=list, secret=True, check=_SIGNING_KEYS)
    #: Seconds a signed message stays valid, from the later of its signing time and its ETA; 0 = no limit.
    #: Env ``MACHINERY_SIGNING_MAX_AGE``.
    signing_max_age: float = setting(0.0, check=at_least(0, " seconds (0 means no limit)"))
    tls: TLSConfig = field(default_factory=TLSConfig)
    sqlite: SQLiteConfig = field(default_factory=SQLiteConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    events: EventsConfig = field(default_factory=EventsConfig)

    if TYPE_CHECKING:
        # What type checkers see; at run time the dataclass's own __init__ runs, wrapped by
        # _accept_sections (below) to take the plugin sections. test_settings checks the names match.
        def __init__(
            self,
            broker: str = ...,
            multiple_broker_separator: str = ...,
            default_queue: str = ...,
            result_backend: str = ...,
            results_expire_in: int = ...,
            dead_letter_expire_in: int = ...,
            lock: str = ...,
            eager: bool = ...,
            no_unix_signals: bool = ...,
            timezone: str = ...,
            signing_keys: list[str] = ...,
            signing_max_age: float = ...,
            tls: TLSConfig = ...,
            sqlite: SQLiteConfig = ...,
            worker: WorkerConfig = ...,
            events: EventsConfig = ...,
            **sections: Section,
        ) -> None: ...

        def __setattr__(self, name: str, value: Any) -> None: ...

    # ---- runtime state (not dataclass fields: invisible to eq, fields(), asdict(), replace()) ----

    def __post_init__(self) -> None:
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._mutex = threading.RLock()
        self._listeners: list[ReloadListener] = []
        self._source: str | None = None
        self._file_values: dict[Path, Any] = {}
        self._file_digest = b""
        self._reloader: _Reloader | None = None
        self._unclaimed: dict[str, dict[str, Any]] = {}

    def _install_sections(self, given: dict[str, Any]) -> None:
        registered = registered_sections()
        for name, section in given.items():
            if not isinstance(section, Section) or type(section).name != name:
                raise TypeError(_bad_keyword(name, section, registered))
            check_section_class(type(section))
            self.__dict__[name] = section
        for name, cls in registered.items():
            if name not in self.__dict__:
                self.__dict__[name] = cls()

    def __getattr__(self, name: str) -> Any:
        # Only called for names not found the normal way: a plugin registered after this config was made
        # (its section starts with its defaults), or a section no installed plugin declares.
        if name.startswith("_"):
            raise AttributeError(name)
        cls = registered_sections().get(name)
        if cls is None:
            raise AttributeError(_missing_section_text(name))
        return self.__dict__.setdefault(name, cls())

    def sections(self) -> dict[str, Section]:
        """Every settings section of this config by name: the core's (``tls``, ``sqlite``, ``worker``),
        then the plugins' (``sqs``, ``redis``, ``amqp``...)."""
        out: dict[str, Section] = {name: getattr(self, name) for name in _CORE_SECTION_NAMES}
        for name in registered_sections():
            out.setdefault(name, getattr(self, name))
        for name, value in list(vars(self).items()):
            if isinstance(value, Section) and not name.startswith("_"):
                out.setdefault(name, value)
        return out

    @property
    def unclaimed(self) -> Mapping[str, Mapping[str, Any]]:
        """Raw values of sections no installed plugin declares (YAML keys, or ``MACHINERY_<SECTION>_*``
        variables), by section name. Kept so nothing given is lost; they are not used."""
        return self._unclaimed

    def _scalars(self) -> list[str]:
        return [f.name for f in fields(self) if f.name not in _CORE_SECTION_NAMES]

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Config)
        return self._compared() == other._compared()

    __hash__ = None  # type: ignore[assignment]  # mutable, like a dataclass with eq

    def _compared(self) -> tuple[list[Any], dict[str, Section]]:
        return [getattr(self, name) for name in self._scalars()], self.sections()

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = {name: getattr(self, name) for name in self._scalars()}
        state.update(self.sections())
        state["_unclaimed"] = self._unclaimed
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._init_runtime()
        for name, value in state.items():
            self.__dict__[name] = value

    def __copy__(self) -> Config:
        return self.snapshot()

    def __deepcopy__(self, memo: dict[int, Any]) -> Config:
        return self.snapshot()

    def __repr__(self) -> str:
        with self._mutex:
            parts = [f"{name}={value!r}" for name, value in safe_items(self) if name in self._scalars()]
            parts.extend(f"{name}={section!r}" for name, section in self.sections().items())
            return f"{type(self).__name__}({', '.join(parts)})"

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
        config = cls()
        table = _table_of(config)
        _apply_values(config, _env_values(table, env))
        config._unclaimed = _unclaimed_env(table, env)
        _warn_unclaimed(config._unclaimed, "The environment")
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
        values, config._unclaimed = _parse_yaml(data, source, _table_of(config))
        _apply_values(config, values)
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

    def _top_level_problems(self, valid: AbstractSet[str]) -> Iterable[str]:
        """Problems between top-level fields (the sections' own are in their ``problems``)."""
        broker = _table_of(self).by_path[("broker",)]
        if "broker" not in valid:
            return
        if not self.eager and not self.broker:
            yield (
                f"{broker.label} must be set to a broker URL, e.g. redis://localhost:6379/0 or "
                f"sqlite:///machinery.db; got {broker.shown(self.broker)}"
            )
        separator = self.multiple_broker_separator
        parts = self.broker.split(separator) if separator and isinstance(separator, str) else []
        if self.broker and not all(part.strip() for part in parts):
            yield (
                f"{broker.label} has an empty URL between the multiple_broker_separator {separator!r} "
                f"separators; got {broker.shown(self.broker)}"
            )

    # ---- safe views ----

    def redacted(self) -> dict[str, Any]:
        """The config as a plain nested dict that is safe to log or print: URLs through ``redact_url``,
        password-like fields as ``***``, clients as their type name."""
        with self._mutex:
            out: dict[str, Any] = {
                name: plain(value) for name, value in safe_items(self) if name in self._scalars()
            }
            for name, section in self.sections().items():
                out[name] = {key: plain(value) for key, value in safe_items(section)}
            return out

    def snapshot(self) -> Config:
        """A detached copy taken under the reload lock: a consistent view of every field at one moment.

        Sections and their dicts are copied; client objects are shared. No watcher, no listeners.
        """
        with self._mutex:
            kwargs: dict[str, Any] = {name: _copy_value(getattr(self, name)) for name in self._scalars()}
            for name, section in self.sections().items():
                kwargs[name] = _copy_section(section)
            copy: Config = type(self)(**kwargs)
            copy._unclaimed = _copy_value(self._unclaimed)
            return copy

    def _blank(self) -> Config:
        """A default config with the same sections as this one (also sections no plugin registered)."""
        sections: dict[str, Any] = {name: type(s)() for name, s in self.sections().items()}
        return type(self)(**sections)

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
    ) -> tuple[dict[Path, tuple[Any, Any]], dict[Path, tuple[Any, Any]], list[ReloadListener]]:
        """Parse and validate ``data``, then apply its safe changes under the lock (raises ConfigError)."""
        if not data.strip():
            raise ConfigError("the file is empty")
        fresh = self._blank()
        table = _table_of(fresh)
        _apply_values(fresh, _parse_yaml(data, source, table)[0])
        fresh.validate()
        new_file = _values_of(fresh)
        with self._mutex:
            live = _values_of(self)
            applied: dict[Path, tuple[Any, Any]] = {}
            restart: dict[Path, tuple[Any, Any]] = {}
            for spec in table.specs:
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
        specs = _table_of(self).by_path

        def safe(path: Path, value: Any) -> Any:
            return safe_value(path[-1], value, specs[path].secret)

        for path, (old, new) in applied.items():
            logger.info(
                "Config %s changed in %s: %r -> %r (applied)",
                _dotted(path),
                source,
                safe(path, old),
                safe(path, new),
            )
        shown: dict[str, tuple[Any, Any]] = {}
        for path, (old, new) in restart.items():
            name = _dotted(path)
            shown[name] = (safe(path, old), safe(path, new))
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


_CORE_SECTION_TYPES: dict[str, type[Section]] = {
    "tls": TLSConfig,
    "sqlite": SQLiteConfig,
    "worker": WorkerConfig,
    "events": EventsConfig,
}
_CORE_FIELDS = frozenset(f.name for f in fields(Config))


def _accept_sections(generated: Callable[..., None]) -> Callable[..., None]:
    """The dataclass's ``__init__``, also taking plugin sections as keyword arguments."""

    @functools.wraps(generated)
    def init(self: Config, *args: Any, **kwargs: Any) -> None:
        given = {name: kwargs.pop(name) for name in list(kwargs) if name not in _CORE_FIELDS}
        generated(self, *args, **kwargs)
        self._install_sections(given)

    return init


setattr(Config, "__init__", _accept_sections(Config.__init__))  # noqa: B010 - mypy forbids assigning a method


def _bad_keyword(name: str, value: Any, registered: Mapping[str, type[Section]]) -> str:
    cls = registered.get(name)
    if cls is not None:
        return (
            f"Config({name}=...) takes a {cls.__module__}.{cls.__qualname__}, got {type(value).__qualname__}"
        )
    if isinstance(value, Section):
        return (
            f"Config({name}=...) got a {type(value).__qualname__}, whose section name is {type(value).name!r}"
        )
    return _missing_section_text(name).replace(
        "'Config' object has no attribute", "Config() got an unexpected keyword argument"
    )


def _missing_section_text(name: str) -> str:
    distribution = plugins.FIRST_PARTY.get(name)
    if distribution:
        return f"Config has no {name!r} section: it comes with {distribution} (pip install {distribution})"
    known = [*_CORE_FIELDS, *registered_sections()]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else " (and no installed plugin declares such a section)"
    return f"'Config' object has no attribute {name!r}{hint}"


def __getattr__(name: str) -> Any:
    """``RELOADABLE_FIELDS`` (computed with the installed plugins) and the old names of moved sections."""
    if name == "RELOADABLE_FIELDS":
        return reloadable_fields()
    moved = _MOVED.get(name)
    if moved is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, class_name, distribution = moved
    warnings.warn(
        f"machinery.config.{name} is deprecated: the section moved to {distribution}, use "
        f"{module_name}.{class_name}",
        DeprecationWarning,
        stacklevel=2,
    )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module_name.startswith(exc.name):
            raise
        raise ImportError(
            f"{name} is now {module_name}.{class_name}, in the {distribution} package, which is not "
            f"installed: pip install {distribution}",
            name=module_name,
        ) from None
    return getattr(module, class_name)


if TYPE_CHECKING:
    #: Dotted names of the fields a live reload applies at run time (all others need a restart), the
    #: installed plugins' included (computed on access).
    RELOADABLE_FIELDS: frozenset[str]


# --------------------------------------------------------------------------------------------------------
# Reading and writing settings by path

_MISSING: Any = object()


def _dotted(path: Path) -> str:
    return ".".join(path)


def _get_value(config: Config, path: Path) -> Any:
    target: Any = config
    for name in path:
        target = getattr(target, name)
    return target


def _set_value(config: Config, path: Path, value: Any) -> None:
    target: Any = config if len(path) == 1 else getattr(config, path[0])
    setattr(target, path[-1], _copy_value(value))


def _apply_values(config: Config, values: Mapping[Path, Any]) -> None:
    for path, value in values.items():
        _set_value(config, path, value)


def _values_of(config: Config) -> dict[Path, Any]:
    return {spec.path: _copy_value(_get_value(config, spec.path)) for spec in _table_of(config).specs}


def _copy_section(section: Any) -> Any:
    """A copy of a section: dicts and lists copied, client objects shared."""
    copied = {
        f.name: _copy_value(getattr(section, f.name))
        for f in fields(section)
        if f.init and f.name != "client"
    }
    return replace(section, **copied)


def _copy_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _copy_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_value(item) for item in value]
    return value


def _warn_unclaimed(unclaimed: Mapping[str, Mapping[str, Any]], source: str) -> None:
    """One warning for every section no installed plugin declares (names and counts, never values)."""
    if not unclaimed:
        return
    parts = []
    for name, raw in unclaimed.items():
        distribution = plugins.FIRST_PARTY.get(name)
        hint = f"; pip install {distribution}" if distribution else ""
        parts.append(f"{name!r} ({len(raw)} setting{'' if len(raw) == 1 else 's'}{hint})")
    logger.warning(
        "%s: settings for %s kept but unused: no installed plugin declares %s",
        source,
        ", ".join(parts),
        "this section" if len(parts) == 1 else "these sections",
    )


# --------------------------------------------------------------------------------------------------------
# Environment

_OUR_PREFIX = "MACHINERY_"


def _env_values(table: _Table, env: Mapping[str, str]) -> dict[Path, Any]:
    values: dict[Path, Any] = {}
    for spec in table.specs:
        found: list[tuple[str, Any]] = []
        for name in spec.env:
            if name in env:
                is_set, value = spec.from_env(name, env[name])
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
    return values


def _unclaimed_env(table: _Table, env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """``MACHINERY_<SECTION>_<NAME>`` variables of sections no installed plugin declares."""
    unclaimed: dict[str, dict[str, Any]] = {}
    for name, raw in env.items():
        if not name.startswith(_OUR_PREFIX) or name in table.env_names:
            continue
        section, sep, rest = name[len(_OUR_PREFIX) :].partition("_")
        section = section.lower()
        if sep and rest and section and section not in table.yaml_keys:
            unclaimed.setdefault(section, {})[name] = raw
    return unclaimed


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


def _parse_yaml(data: bytes, source: str, table: _Table) -> tuple[dict[Path, Any], dict[str, dict[str, Any]]]:
    """The values a YAML document sets, by field path, and the raw mappings of sections no installed
    plugin declares (reported in one warning). Unknown keys are logged; bad types raise."""
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
        return {}, {}
    if not isinstance(doc, dict):
        raise ConfigError(
            f"{source}: expected a mapping of settings at the top level (e.g. 'broker: redis://...'), "
            f"got {type_name(doc)}"
        )
    values: dict[Path, Any] = {}
    origin: dict[Path, str] = {}
    unclaimed: dict[str, dict[str, Any]] = {}
    top_level = table.yaml_keys[""]
    for key, value in doc.items():
        name = str(key)
        if name and name in table.yaml_keys:
            if value is None:
                continue  # "amqp:" with nothing under it: keep the defaults
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{source}: '{name}' must be a mapping of settings (indented 'key: value' lines), "
                    f"got {type_name(value)}"
                )
            for sub_key, sub_value in value.items():
                _take(table, values, origin, name, str(sub_key), sub_value, source)
        elif name not in top_level and (
            isinstance(value, dict) or (value is None and name in plugins.FIRST_PARTY)
        ):
            unclaimed[name] = {str(k): v for k, v in (value or {}).items()}  # a plugin that is not installed
        else:
            _take(table, values, origin, "", name, value, source)
    _warn_unclaimed(unclaimed, source)
    return values, unclaimed


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
    table: _Table,
    values: dict[Path, Any],
    origin: dict[Path, str],
    section: str,
    key: str,
    value: Any,
    source: str,
) -> None:
    spec = table.yaml_keys[section].get(key)
    where = f"{section}.{key}" if section else key
    if spec is None:
        known = list(table.yaml_keys[section]) + ([s for s in table.yaml_keys if s] if not section else [])
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {f'{section}.' if section else ''}{close[0]}?)" if close else ""
        logger.warning("%s: unknown key %r ignored%s", source, where, hint)
        return
    converted = spec.from_yaml(value, where, source)
    if spec.path in values and values[spec.path] != converted:
        raise ConfigError(
            f"{source}: {origin[spec.path]} and {where} both set {spec.dotted} to different values; keep one"
        )
    values[spec.path] = converted
    origin[spec.path] = where


# --------------------------------------------------------------------------------------------------------
# Validation: each setting's type and check, then each section's problems between settings


def _problems(config: Config) -> list[str]:
    problems: list[str] = []
    valid: dict[str, set[str]] = {}
    for spec in _table_of(config).specs:
        value = _get_value(config, spec.path)
        problem = spec.type_problem(value)
        if problem is None:
            problem = spec.check_problem(value)
        if problem is None:
            valid.setdefault(spec.section, set()).add(spec.name)
        else:
            problems.append(problem)
    problems.extend(config._top_level_problems(valid.get("", set())))
    for name, section in config.sections().items():
        problems.extend(section.problems(frozenset(valid.get(name, ()))))
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
