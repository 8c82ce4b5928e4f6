"""Machinery for Python: the Redis broker, result backend and lock (``pip install machinery-redis``).

``redis://``, ``rediss://``, ``redis+socket://`` and ``redis+sentinel://`` URLs select them through the
``machinery`` entry point; see README.md for the URL forms, settings and the at-least-once design.

The classes are imported on first use, so loading the entry point (to list schemes or settings) does not
import redis-py.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backend import RedisBackend
    from .broker import RedisBroker, RedisDelivery
    from .lock import RedisLock
    from .settings import RedisSettings
    from .url import RedisTarget, parse_url

__all__ = [
    "RedisBackend",
    "RedisBroker",
    "RedisDelivery",
    "RedisLock",
    "RedisSettings",
    "RedisTarget",
    "parse_url",
]
__version__ = "0.1.0"

_HOMES = {
    "RedisBackend": ".backend",
    "RedisBroker": ".broker",
    "RedisDelivery": ".broker",
    "RedisLock": ".lock",
    "RedisSettings": ".settings",
    "RedisTarget": ".url",
    "parse_url": ".url",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home, __name__), name)
