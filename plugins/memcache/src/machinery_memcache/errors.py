"""The plugin's errors.

Transient ones (a server unreachable, full) are :class:`~machinery.errors.BackendError`: the worker waits
them out. :class:`MemcachePermanentError` is the one seam for "retrying cannot fix this" (a record over the
item size limit, a key memcached cannot store): like the core's planned ``machinery.errors.PermanentError``
it is deliberately **not** a BackendError, and it is a ``ValueError``, which the worker's state writer
already counts as permanent: the task ends FAILURE with this error's text and the worker carries on. When
``PermanentError`` exists in the core, it becomes this class's base.
"""

from __future__ import annotations

from machinery.errors import BackendError, MachineryError

__all__ = [
    "InvalidKeyError",
    "MemcacheConnectionError",
    "MemcachePermanentError",
    "OutOfMemoryError",
    "ValueTooLargeError",
]


class MemcacheConnectionError(BackendError):
    """A server could not be reached or dropped the connection (transient: a retry may succeed)."""


class MemcachePermanentError(MachineryError, ValueError):
    """The request can never succeed as it is; retrying the same write is pointless (not a
    BackendError: callers that retry backend errors must not retry this)."""


class ValueTooLargeError(MemcachePermanentError):
    """A record is larger than memcached's item size limit (``-I``, 1 MiB by default)."""


class InvalidKeyError(MemcachePermanentError):
    """A task or group uuid memcached cannot use as a key (over 250 bytes, spaces or control bytes)."""


class OutOfMemoryError(BackendError):
    """memcached started with ``-M`` is full and refuses new items instead of evicting old ones."""
