"""The entry point (group ``machinery``): the hooks that make ``example://`` URLs build this plugin's
objects. Only this module is imported when Machinery loads plugins; each class is imported the first
time a URL of ours asks for it.

When ``machinery.plugins.transport(...)`` ships in the core, the four factory hooks become one call::

    plugin = transport(
        ["example"],
        broker="machinery_example.broker:ExampleBroker",
        backend="machinery_example.backend:ExampleBackend",
        lock="machinery_example.lock:ExampleLock",
    )
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from machinery.plugins import Kind, SchemeRow, hookimpl, scheme_of

from .url import SCHEMES

if TYPE_CHECKING:
    from machinery.backend import Backend
    from machinery.broker import Broker
    from machinery.config import Config
    from machinery.lock import Lock
    from machinery.settings import Section

#: the distribution name, for "pip install ..." hints and `machinery plugins`
DISTRIBUTION = "machinery-example"
KINDS: tuple[Kind, ...] = ("broker", "backend", "lock")


@hookimpl
def machinery_schemes() -> list[SchemeRow]:
    return [SchemeRow(scheme, kind, DISTRIBUTION) for scheme in SCHEMES for kind in KINDS]


@hookimpl
def machinery_settings() -> list[type[Section]]:
    from .settings import ExampleSettings  # settings.py imports nothing heavy

    return [ExampleSettings]


@hookimpl
def machinery_broker(url: str, config: Config) -> Broker | None:
    if scheme_of(url) not in SCHEMES:
        return None  # not ours: another plugin's hook answers
    from .broker import ExampleBroker

    return ExampleBroker.from_url(url, config)


@hookimpl
def machinery_backend(url: str, config: Config) -> Backend | None:
    if scheme_of(url) not in SCHEMES:
        return None
    from .backend import ExampleBackend

    return ExampleBackend.from_url(url, config)


@hookimpl
def machinery_lock(url: str, config: Config) -> Lock | None:
    if scheme_of(url) not in SCHEMES:
        return None
    from .lock import ExampleLock

    return ExampleLock.from_url(url, config)
