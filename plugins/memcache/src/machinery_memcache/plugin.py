"""Entry point (group ``machinery``): the hooks that make ``memcache://`` URLs build this package's
result backend and lock. Imports are lazy so that listing plugins stays cheap."""

from __future__ import annotations

from typing import TYPE_CHECKING

from machinery.plugins import Kind, SchemeRow, hookimpl, scheme_of

from .url import SCHEMES

if TYPE_CHECKING:
    from machinery.backend import Backend
    from machinery.config import Config
    from machinery.lock import Lock
    from machinery.settings import Section

DISTRIBUTION = "machinery-memcache"
KINDS: tuple[Kind, ...] = ("backend", "lock")


@hookimpl
def machinery_schemes() -> list[SchemeRow]:
    return [SchemeRow(scheme, kind, DISTRIBUTION) for scheme in SCHEMES for kind in KINDS]


@hookimpl
def machinery_settings() -> list[type[Section]]:
    from .settings import MemcacheSettings  # the settings module only: listing settings loads no client

    return [MemcacheSettings]


@hookimpl
def machinery_backend(url: str, config: Config) -> Backend | None:
    if scheme_of(url) not in SCHEMES:
        return None
    from .backend import MemcacheBackend

    return MemcacheBackend.from_url(url, config)


@hookimpl
def machinery_lock(url: str, config: Config) -> Lock | None:
    if scheme_of(url) not in SCHEMES:
        return None
    from .lock import MemcacheLock

    return MemcacheLock.from_url(url, config)
