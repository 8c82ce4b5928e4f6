"""Machinery for Python: the Redis broker, result backend and lock (``pip install machinery-redis``).

``redis://``, ``rediss://``, ``redis+socket://`` and ``redis+sentinel://`` URLs select them through the
``machinery`` entry point; see README.md for the URL forms, settings and the at-least-once design.
"""

from __future__ import annotations

from .backend import RedisBackend
from .broker import RedisBroker, RedisDelivery
from .lock import RedisLock
from .url import RedisTarget, parse_url

__all__ = ["RedisBackend", "RedisBroker", "RedisDelivery", "RedisLock", "RedisTarget", "parse_url"]
__version__ = "0.1.0"
