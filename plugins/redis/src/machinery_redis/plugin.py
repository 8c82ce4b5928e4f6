"""Entry point (group ``machinery``): the hooks that make ``redis://`` URLs build this package's objects."""

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

DISTRIBUTION = "machinery-redis"
KINDS: tuple[Kind, ...] = ("broker", "backend", "lock")


@hookimpl
def machinery_schemes() -> list[SchemeRow]:
    return [SchemeRow(scheme, kind, DISTRIBUTION) for scheme in SCHEMES for kind in KINDS]


@hookimpl
def machinery_settings() -> list[type[Section]]:
    from .settings import RedisSettings  # the settings module only: listing settings never loads the broker

    return [RedisSettings]


@hookimpl
def machinery_broker(url: str, config: Config) -> Broker | None:
    if scheme_of(url) not in SCHEMES:
        return None
    from .broker import RedisBroker

    return RedisBroker.from_url(url, config)


@hookimpl
def machinery_backend(url: str, config: Config) -> Backend | None:
    if scheme_of(url) not in SCHEMES:
        return None
    from .backend import RedisBackend

    return RedisBackend.from_url(url, config)


@hookimpl
def machinery_lock(url: str, config: Config) -> Lock | None:
    if scheme_of(url) not in SCHEMES:
        return None
    from .lock import RedisLock

    return RedisLock.from_url(url, config)
