"""Plugin discovery: a pluggy ``PluginManager`` over the ``machinery`` entry-point group.

A transport package registers a module (or object) under the entry-point group ``machinery``
that implements some of the hooks below with :data:`hookimpl`. The URL's scheme picks the plugin:
each factory hook returns ``None`` for URLs that are not its own.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import threading
import types
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, NamedTuple
from urllib.parse import urlsplit

import pluggy

from .errors import PluginNotFoundError
from .redact import redact_url

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .backend import Backend
    from .broker import Broker
    from .config import Config
    from .lock import Lock
    from .settings import Section
    from .signature import Signature, TaskState

__all__ = [
    "FIRST_PARTY",
    "Kind",
    "SchemeRow",
    "Transport",
    "first_result",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "resolve_backend",
    "resolve_broker",
    "resolve_lock",
    "scheme_of",
    "transport",
]

PROJECT = "machinery"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Kind = Literal["broker", "backend", "lock"]


class SchemeRow(NamedTuple):
    """One row of ``machinery_schemes()``: a URL scheme, what it builds, which package provides it."""

    scheme: str
    kind: Kind
    distribution: str


#: Schemes of first-party packages, for the "pip install ..." hint when none is installed.
FIRST_PARTY: dict[str, str] = {
    "redis": "machinery-redis",
    "rediss": "machinery-redis",
    "redis+socket": "machinery-redis",
    "redis+sentinel": "machinery-redis",
    "amqp": "machinery-amqp",
    "amqps": "machinery-amqp",
    "sqs": "machinery-sqs",
    "https://sqs": "machinery-sqs",
    "dynamodb": "machinery-sqs",
    "https://dynamodb": "machinery-sqs",
    "mongodb": "machinery-mongodb",
    "mongodb+srv": "machinery-mongodb",
    "memcache": "machinery-memcache",
    "gcppubsub": "machinery-gcppubsub",
}


class MachinerySpec:
    """Hook specifications. Factories must not open connections: connect lazily on first use."""

    @hookspec(firstresult=True)
    def machinery_broker(self, url: str, config: Config) -> Broker | None:
        """Return a broker for ``url``, or None when the URL is not this plugin's."""

    @hookspec(firstresult=True)
    def machinery_backend(self, url: str, config: Config) -> Backend | None:
        """Return a result backend for ``url``, or None when the URL is not this plugin's."""

    @hookspec(firstresult=True)
    def machinery_lock(self, url: str, config: Config) -> Lock | None:
        """Return a lock for ``url``, or None when the URL is not this plugin's."""

    @hookspec
    def machinery_schemes(self) -> list[SchemeRow]:  # type: ignore[empty-body]
        """Rows (scheme, kind, distribution) this plugin serves; collected from every plugin."""

    @hookspec(firstresult=True)
    def machinery_publish_with_states(
        self, broker: Broker, backend: Backend, signatures: Sequence[Signature], states: Sequence[TaskState]
    ) -> bool | None:
        """Store ``states`` (the PENDING records) through ``backend`` and publish ``signatures`` through
        ``broker`` in one round trip, when this plugin owns both and can (e.g. one Redis server): return
        True when done. None (or False) lets the next plugin try, then the core stores and publishes in
        two steps. The states must be stored before any worker can see a message: sent first is not
        enough when they travel on another connection or to another server than the messages (nothing
        orders those writes, and a PENDING that lands late overwrites the worker's result)."""

    @hookspec
    def machinery_settings(self) -> list[type[Section]]:  # type: ignore[empty-body]
        """Settings sections (:class:`machinery.settings.Section` subclasses) this plugin declares;
        collected from every plugin. Import only the settings module here, never the broker."""


_manager: pluggy.PluginManager | None = None
_manager_lock = threading.Lock()


def get_plugin_manager(refresh: bool = False) -> pluggy.PluginManager:
    """The process-wide plugin manager, loading entry points on first use."""
    global _manager
    with _manager_lock:
        if _manager is None or refresh:
            pm = pluggy.PluginManager(PROJECT)
            pm.add_hookspecs(MachinerySpec)
            pm.load_setuptools_entrypoints(PROJECT)
            _register_module_transports(pm)
            _manager = pm
        return _manager


def _register_module_transports(pm: pluggy.PluginManager) -> None:
    """Register the :class:`Transport` objects held by entry-point modules (the module form)."""
    for plugin in list(pm.get_plugins()):
        if not isinstance(plugin, types.ModuleType):
            continue
        for attr, value in vars(plugin).items():
            if isinstance(value, Transport) and not pm.is_registered(value):
                pm.register(value, name=f"{pm.get_name(plugin)}:{attr}")


def first_result(hook: pluggy.HookCaller, **kwargs: Any) -> Any:
    """``hook(**kwargs)`` for a ``firstresult`` hook on a hot path (``send_task`` asks
    ``machinery_publish_with_states`` for every task): the implementations are called directly, newest
    first, each with the arguments it declares, which costs ~0.2 µs instead of pluggy's 2-8 µs. A hook
    with wrappers goes through pluggy."""
    impls = hook.get_hookimpls()
    if any(impl.hookwrapper or impl.wrapper for impl in impls):
        return hook(**kwargs)
    for impl in reversed(impls):
        result = impl.function(*[kwargs[name] for name in impl.argnames])
        if result is not None:
            return result
    return None


def scheme_of(url: str) -> str:
    """The URL's scheme in lower case (``""`` when it has none)."""
    return urlsplit(url).scheme.lower() if "://" in url else ""


def install_hint(url: str) -> str:
    scheme = scheme_of(url)
    host = urlsplit(url).hostname or "" if "://" in url else ""
    if scheme in ("https", "http"):
        for service in ("sqs", "dynamodb"):
            if host.startswith(service + "."):
                return f": pip install {FIRST_PARTY['https://' + service]}"
    package = FIRST_PARTY.get(scheme)
    if package:
        return f": pip install {package}"
    known = ", ".join(sorted({row.scheme for row in list_schemes()}))
    return f" (no installed plugin knows {scheme + '://' if scheme else 'it'}; installed schemes: {known})"


def list_schemes() -> list[SchemeRow]:
    """Every (scheme, kind, distribution) row from every installed plugin."""
    rows: list[SchemeRow] = []
    for result in get_plugin_manager().hook.machinery_schemes():
        rows.extend(SchemeRow(*row) for row in result)
    return sorted(set(rows))


def _resolve(kind: Kind, url: str, config: Config) -> object:
    if not url:
        raise PluginNotFoundError(f"No {kind} URL configured: set Config.{_field(kind)}")
    hook = getattr(get_plugin_manager().hook, f"machinery_{kind}")
    obj = hook(url=url, config=config)
    if obj is None:
        raise PluginNotFoundError(f"No {kind} for {redact_url(url)!r}{install_hint(url)}")
    return obj


def _field(kind: Kind) -> str:
    return {"broker": "broker", "backend": "result_backend", "lock": "lock"}[kind]


def resolve_broker(url: str, config: Config) -> Broker:
    """The broker an installed plugin builds for ``url``; raises with an install hint otherwise."""
    return _resolve("broker", url, config)  # type: ignore[return-value]


def resolve_backend(url: str, config: Config) -> Backend:
    """The result backend for ``url``; raises with an install hint otherwise."""
    return _resolve("backend", url, config)  # type: ignore[return-value]


def resolve_lock(url: str, config: Config) -> Lock:
    """The lock for ``url``; raises with an install hint otherwise."""
    return _resolve("lock", url, config)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# transport(): the hooks of a transport package, generated


class Transport:
    """The hooks of one transport package, built by :func:`transport`.

    Register it in either form: name the object as the entry point (``"machinery_x.plugin:plugin"``),
    or name the module holding it (``"machinery_x.plugin"``): every ``Transport`` at the top level of
    an entry-point module is registered too, next to the module's own ``@hookimpl`` functions (a
    package adds hooks of its own that way, e.g. ``machinery_publish_with_states``).
    """

    def __init__(
        self,
        schemes: Iterable[str],
        *,
        broker: str | None = None,
        backend: str | None = None,
        lock: str | None = None,
        settings: str | None = None,
        distribution: str | None = None,
        matches: Callable[[str], bool] | None = None,
    ) -> None:
        self.schemes = tuple(s.lower() for s in schemes)
        if not self.schemes:
            raise ValueError("transport(): name at least one URL scheme")
        if matches is not None and not callable(matches):
            raise ValueError(f"transport(): matches={matches!r} is not a callable(url) -> bool")
        #: decides which URLs are ours when the scheme alone cannot (None: the scheme decides)
        self.matches = matches
        self.targets: dict[Kind, str] = {}
        for kind, target in (("broker", broker), ("backend", backend), ("lock", lock)):
            if target is not None:
                if ":" not in target:
                    raise ValueError(f"transport(): {kind}={target!r} is not 'package.module:Class'")
                self.targets[kind] = target  # type: ignore[index]
        if not self.targets:
            raise ValueError("transport(): give at least one of broker=, backend=, lock=")
        if settings is not None and ":" not in settings:
            raise ValueError(f"transport(): settings={settings!r} is not 'package.module:Class'")
        #: the settings section class, 'package.module:Class' (imported when settings are collected)
        self.settings = settings
        self._distribution = distribution
        self._classes: dict[Kind, Any] = {}
        #: the top-level import package the classes live in
        self.package = next(iter(self.targets.values())).split(":")[0].split(".")[0]

    def __repr__(self) -> str:
        return f"<Transport {'/'.join(self.schemes)}: {', '.join(self.targets)}>"

    def distribution(self) -> str:
        """The distribution (``pip install`` name) shipping the package, read from its metadata on
        first use (a method, not a property: pluggy reads every attribute when it registers us)."""
        if self._distribution is None:
            self._distribution = _distribution_of(self.package)
        return self._distribution

    def load(self, kind: Kind) -> Any:
        """The class for ``kind``, imported on first use (listing plugins imports nothing)."""
        cls = self._classes.get(kind)
        if cls is None:
            cls = self._classes[kind] = _import(self.targets[kind])
        return cls

    def claims(self, url: str) -> bool:
        """True when ``url`` is this transport's: its scheme is one of ours, or ``matches(url)`` says so
        when a matcher was given (it then decides alone). No I/O."""
        if self.matches is not None:
            return bool(self.matches(url))
        return scheme_of(url) in self.schemes

    def _build(self, kind: Kind, url: str, config: Config) -> Any:
        if kind not in self.targets or not self.claims(url):
            return None
        return self.load(kind).from_url(url, config)

    @hookimpl
    def machinery_schemes(self) -> list[SchemeRow]:
        return [
            SchemeRow(scheme, kind, self.distribution()) for scheme in self.schemes for kind in self.targets
        ]

    @hookimpl
    def machinery_broker(self, url: str, config: Config) -> Broker | None:
        broker: Broker | None = self._build("broker", url, config)
        return broker

    @hookimpl
    def machinery_backend(self, url: str, config: Config) -> Backend | None:
        backend: Backend | None = self._build("backend", url, config)
        return backend

    @hookimpl
    def machinery_lock(self, url: str, config: Config) -> Lock | None:
        lock: Lock | None = self._build("lock", url, config)
        return lock

    @hookimpl
    def machinery_settings(self) -> list[type[Section]]:
        # the settings module only: collecting settings never imports the broker
        return [_import(self.settings)] if self.settings is not None else []


def transport(
    schemes: Iterable[str],
    *,
    broker: str | None = None,
    backend: str | None = None,
    lock: str | None = None,
    settings: str | None = None,
    distribution: str | None = None,
    matches: Callable[[str], bool] | None = None,
) -> Transport:
    """The hooks of a transport package in one call. In ``machinery_x/plugin.py``::

        plugin = transport(
            ["x", "xs"], broker="machinery_x.broker:XBroker", backend="machinery_x.backend:XBackend"
        )

    and in ``pyproject.toml``: ``[project.entry-points.machinery] x = "machinery_x.plugin"``.

    A URL whose scheme is one of ``schemes`` builds the named class with ``Cls.from_url(url, config)``;
    classes are imported on first use. ``settings`` names the package's settings section class
    (:class:`machinery.settings.Section`), returned from ``machinery_settings``. ``distribution`` (for
    ``machinery plugins`` and install hints) is read from the package metadata unless given.

    ``matches`` is for URLs the scheme cannot tell apart: a function ``url -> bool`` (no I/O, never
    raising) that then decides alone which URLs build these classes, e.g. SQS's
    ``https://sqs.<region>.amazonaws.com/<account>`` next to other ``https://`` URLs; ``schemes`` are
    then what ``machinery plugins`` lists (``"https://sqs"`` is fine there). A package whose kinds take
    different URLs (SQS brokers, DynamoDB backends) makes one ``transport()`` per kind in its plugin
    module.
    """
    return Transport(
        schemes,
        broker=broker,
        backend=backend,
        lock=lock,
        settings=settings,
        distribution=distribution,
        matches=matches,
    )


def _import(target: str) -> Any:
    """``'package.module:Name'`` → the object."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _distribution_of(package: str) -> str:
    """The distribution that ships import package ``package``: the one whose ``machinery`` entry point
    lives in it (works for editable installs too), else the metadata's package index, else the
    package name with dashes."""
    for ep in importlib.metadata.entry_points(group=PROJECT):
        if ep.module.split(".")[0] == package and ep.dist is not None:
            return str(ep.dist.name)
    names = importlib.metadata.packages_distributions().get(package)
    return names[0] if names else package.replace("_", "-")
