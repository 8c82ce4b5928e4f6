"""Plugin discovery: a pluggy ``PluginManager`` over the ``machinery`` entry-point group.

A transport package registers a module (or object) under the entry-point group ``machinery``
that implements some of the hooks below with :data:`hookimpl`. The URL's scheme picks the plugin:
each factory hook returns ``None`` for URLs that are not its own.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Literal, NamedTuple
from urllib.parse import urlsplit

import pluggy

from .errors import PluginNotFoundError
from .redact import redact_url

if TYPE_CHECKING:
    from .backend import Backend
    from .broker import Broker
    from .config import Config
    from .lock import Lock
    from .settings import Section

__all__ = [
    "FIRST_PARTY",
    "Kind",
    "SchemeRow",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "resolve_backend",
    "resolve_broker",
    "resolve_lock",
    "scheme_of",
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
            _manager = pm
        return _manager


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
