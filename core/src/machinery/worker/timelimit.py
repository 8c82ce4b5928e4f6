"""Soft and hard time limits for tasks running in threads.

A soft limit raises :class:`~machinery.errors.TimeLimitExceeded` inside the task's thread (at its
next Python bytecode; a task blocked in C code sees it when it returns to Python). A hard limit
calls back so the runner can fail the task at once; the thread's late result is discarded.
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import threading
import time
from collections.abc import Callable

__all__ = ["TimeLimits", "raise_in_thread"]


def raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> bool:
    """Ask CPython to raise ``exc_type`` in the thread ``thread_id``; True if the thread exists."""
    changed = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type)
    )
    return bool(changed == 1)


class TimeLimits:
    """One watchdog thread for every running task's deadlines."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cancelled: set[int] = set()
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def schedule(self, delay: float, action: Callable[[], None]) -> int:
        """Run ``action`` after ``delay`` seconds unless cancelled; returns a handle."""
        handle = next(self._ids)
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, handle, action))
            self._cond.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="machinery-timelimits", daemon=True)
                self._thread.start()
        return handle

    def cancel(self, handle: int) -> None:
        with self._cond:
            self._cancelled.add(handle)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                _, handle, action = heapq.heappop(self._heap)
                if handle in self._cancelled:
                    self._cancelled.discard(handle)
                    continue
            action()
