"""Fork safety: objects that own threads, connections or leases reset themselves in a child process.

After ``os.fork()`` only the forking thread exists in the child; locks held by other threads stay held
and connections are shared with the parent. An object that cares registers a method with
:func:`at_fork`; the child calls it right after the fork, before anything else runs there.
"""

from __future__ import annotations

import logging
import os
import threading
import types
import weakref
from collections.abc import Callable

__all__ = ["at_fork"]

logger = logging.getLogger("machinery.forking")

#: each returns the callback, or None once its object is gone: registering never keeps an object alive
_callbacks: list[Callable[[], Callable[[], object] | None]] = []
_lock = threading.Lock()


def at_fork(obj: object, method: str) -> None:
    """Call ``obj.<method>()`` in every child process right after ``os.fork()``, for as long as
    ``obj`` lives (it is held by a weak reference; a module works too). Callbacks run in the order
    they were registered; one that raises is logged and does not stop the others."""
    bound = getattr(obj, method)
    # a module's function (or a static one) lives as long as its module anyway: held strongly
    ref: Callable[[], Callable[[], object] | None] = (
        weakref.WeakMethod(bound) if isinstance(bound, types.MethodType) else _Strong(bound)
    )
    with _lock:
        _callbacks[:] = [r for r in _callbacks if r() is not None]
        _callbacks.append(ref)


class _Strong:
    def __init__(self, callback: Callable[[], object]) -> None:
        self.callback = callback

    def __call__(self) -> Callable[[], object]:
        return self.callback


def _after_fork_in_child() -> None:
    global _lock
    # Another thread of the parent may have held the lock at the fork: never wait for it here.
    _lock = threading.Lock()
    for ref in list(_callbacks):
        callback = ref()
        if callback is None:
            continue
        try:
            callback()
        except Exception:  # pragma: no cover - must never break a fork
            logger.exception("resetting %r after fork failed", callback)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
