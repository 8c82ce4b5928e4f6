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

from ..log import logger

__all__ = ["TimeLimits", "raise_in_thread"]


def raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> bool:
    """Ask CPython to raise ``exc_type`` in the thread ``thread_id``; True if the thread exists."""
    changed = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type)
    )
    return bool(changed == 1)


class TimeLimits:
    """One watchdog thread for every running task's deadlines.

    The heap holds only ``(deadline, handle)``; actions live in a dict until they run or are
    cancelled, so a cancelled limit frees its closure (and the Signature in it) at once, and the
    heap is compacted when cancelled entries outnumber live ones. An action that raises is logged;
    the watchdog carries on.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._actions: dict[int, Callable[[], None]] = {}
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def schedule(self, delay: float, action: Callable[[], None]) -> int:
        """Run ``action`` after ``delay`` seconds unless cancelled; returns a handle."""
        handle = next(self._ids)
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, handle))
            self._actions[handle] = action
            self._cond.notify()
            if self._thread is None:
                self._closed = False
                self._thread = threading.Thread(target=self._loop, name="machinery-timelimits", daemon=True)
                self._thread.start()
        return handle

    def cancel(self, handle: int) -> None:
        with self._cond:
            self._actions.pop(handle, None)
            if len(self._heap) > 64 and len(self._heap) > 2 * len(self._actions):
                self._heap = [entry for entry in self._heap if entry[1] in self._actions]
                heapq.heapify(self._heap)

    def __len__(self) -> int:
        """Deadlines still pending (for tests and metrics)."""
        with self._cond:
            return len(self._actions)

    def close(self) -> None:
        """Stop the watchdog thread (pending limits are dropped). A later schedule starts a new one."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._actions.clear()
            thread, self._thread = self._thread, None
            self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

    def _next_action(self) -> Callable[[], None] | None:
        """Wait for the next due action; None once closed."""
        with self._cond:
            while not self._closed:
                if self._heap and self._heap[0][0] <= time.monotonic():
                    _, handle = heapq.heappop(self._heap)
                    action = self._actions.pop(handle, None)
                    if action is not None:
                        return action
                    continue
                self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
            return None

    def _loop(self) -> None:
        while (action := self._next_action()) is not None:
            try:
                action()
            except BaseException:  # one failing action must not switch every later limit off
                logger.exception("time limit action failed; the watchdog carries on")
            del action
