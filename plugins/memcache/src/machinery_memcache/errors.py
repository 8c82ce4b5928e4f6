"""The plugin's errors: all are :class:`~machinery.errors.BackendError`, so callers need no new handling.

:class:`MemcachePermanentError` is the one seam for "retrying cannot fix this" (a record over the item
size limit, a key memcached cannot store). When the core's ``machinery.errors.PermanentError`` exists,
it becomes a base class here, and the worker fails that task instead of retrying the write.
"""

from __future__ import annotations

from machinery.errors import BackendError

__all__ = [
    "InvalidKeyError",
    "MemcacheConnectionError",
    "MemcachePermanentError",
    "OutOfMemoryError",
    "ValueTooLargeError",
]


class MemcacheConnectionError(BackendError):
    """A server could not be reached or dropped the connection (transient: a retry may succeed)."""


class MemcachePermanentError(BackendError):
    """The request can never succeed as it is; retrying the same write is pointless."""


class ValueTooLargeError(MemcachePermanentError):
    """A record is larger than memcached's item size limit (``-I``, 1 MiB by default)."""


class InvalidKeyError(MemcachePermanentError):
    """A task or group uuid memcached cannot use as a key (over 250 bytes, spaces or control bytes)."""


class OutOfMemoryError(BackendError):
    """memcached started with ``-M`` is full and refuses new items instead of evicting old ones."""
