"""Machinery for Python: the Memcached result backend and lock (``pip install machinery-memcache``).

``memcache://host:11211`` and ``memcache://h1:11211,h2:11211`` URLs select them through the
``machinery`` entry point; see README.md for the URL options, the key layout shared with Go Machinery
and the limits (item size, eviction, polling).
"""

from __future__ import annotations

from .backend import MemcacheBackend
from .errors import (
    InvalidKeyError,
    MemcacheConnectionError,
    MemcachePermanentError,
    OutOfMemoryError,
    ValueTooLargeError,
)
from .lock import MemcacheLock
from .settings import MemcacheSettings
from .url import MemcacheTarget, Server, parse_url

__all__ = [
    "InvalidKeyError",
    "MemcacheBackend",
    "MemcacheConnectionError",
    "MemcacheLock",
    "MemcachePermanentError",
    "MemcacheSettings",
    "MemcacheTarget",
    "OutOfMemoryError",
    "Server",
    "ValueTooLargeError",
    "parse_url",
]
__version__ = "0.1.0"
