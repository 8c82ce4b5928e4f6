"""The visibility heartbeat: keeps the messages of running tasks invisible to other consumers.

One daemon thread per broker renews, every half visibility timeout, the visibility of each delivery it
holds, in one batch call per queue. A killed process renews nothing, so its messages come back after one
visibility timeout. This is the seam the core's ``machinery.lease.LeaseKeeper`` replaces once it lands.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["VisibilityKeeper"]

logger = logging.getLogger("machinery.sqs")
D = TypeVar("D", bound=Hashable)


class VisibilityKeeper(Generic[D]):
    """Calls ``renew(due)`` for the held items whose renewal time came; ``renew`` returns the items
    that are gone (deleted, or their receipt no longer valid): they are dropped."""

    def __init__(self, renew: Callable[[list[D]], list[D]], name: str = "machinery-sqs-visibility") -> None:
        self._renew = renew
        self._name = name
        self._due: dict[D, tuple[float, float]] = {}  # item -> (next renewal, interval)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def add(self, item: D, interval: float) -> None:
        """Hold ``item``: renew it every ``interval`` seconds until :meth:`discard`."""
        with self._cond:
            if self._closed:
                return
            self._due[item] = (time.monotonic() + interval, interval)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def discard(self, item: D) -> None:
        with self._cond:
            self._due.pop(item, None)

    def held(self) -> list[D]:
        with self._cond:
            return list(self._due)

    def close(self) -> list[D]:
        """Stop renewing; returns the items still held (the caller gives them back). Idempotent."""
        with self._cond:
            self._closed = True
            left = list(self._due)
            self._due.clear()
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)
        return left

    def _run(self) -> None:
        while True:
            with self._cond:
                due = self._wait_for_due()
                if due is None:
                    return
            try:
                gone = self._renew(due)
            except Exception as exc:  # keep renewing: the next round may get through
                logger.warning("could not renew the visibility of %d messages: %s", len(due), exc)
                gone = []
            with self._cond:
                for item in gone:
                    self._due.pop(item, None)

    def _wait_for_due(self) -> list[D] | None:
        """Under the lock: wait until something is due (reschedule it) or the keeper closed (None)."""
        while not self._closed:
            now = time.monotonic()
            due = [item for item, (at, _interval) in self._due.items() if at <= now]
            if due:
                for item in due:
                    self._due[item] = (now + self._due[item][1], self._due[item][1])
                return due
            nearest = min((at for at, _interval in self._due.values()), default=now + 60.0)
            self._cond.wait(max(0.01, nearest - now))
        return None
