"""The plugin's errors.

Transient ones (a server unreachable, full) are :class:`~machinery.errors.BackendError`: the worker waits
them out. :class:`MemcachePermanentError` is the one seam for "retrying cannot fix this" (a record over the
item size limit, a key memcached cannot store): a core :class:`~machinery.errors.PermanentError`, so
deliberately **not** a BackendError, and a ``ValueError`` as before. The worker's state writer ends the
task FAILURE with this error's text (or dead-letters the message when not even that can be stored) and
carries on.
"""

from __future__ import annotations

from machinery.errors import BackendError, PermanentError

__all__ = [
    "InvalidKeyError",
    "MemcacheConnectionError",
    "MemcachePermanentError",
    "OutOfMemoryError",
    "ValueTooLargeError",
]


class MemcacheConnectionError(BackendError):
    """A server could not be reached or dropped the connection (transient: a retry may succeed)."""


class MemcachePermanentError(PermanentError, ValueError):
    """The request can never succeed as it is; retrying the same write is pointless (not a
    BackendError: callers that retry backend errors must not retry this)."""


class ValueTooLargeError(MemcachePermanentError):
    """A record is larger than memcached's item size limit (``-I``, 1 MiB by default)."""


class InvalidKeyError(MemcachePermanentError):
    """A task or group uuid memcached cannot use as a key (over 250 bytes, spaces or control bytes)."""


class OutOfMemoryError(BackendError):
    """memcached started with ``-M`` is full and refuses new items instead of evicting old ones."""
