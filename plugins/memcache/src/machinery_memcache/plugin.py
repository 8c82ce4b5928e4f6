"""Entry point (group ``machinery``): ``memcache://`` URLs build this package's result backend and lock
(memcached is not a queue), and its settings section joins ``Config``; the classes are imported on first
use, so listing plugins never loads pymemcache (``transport()``)."""

from __future__ import annotations

from machinery.plugins import transport

from .url import SCHEMES

__all__ = ["plugin"]

plugin = transport(
    SCHEMES,
    backend="machinery_memcache.backend:MemcacheBackend",
    lock="machinery_memcache.lock:MemcacheLock",
    settings="machinery_memcache.settings:MemcacheSettings",
)
