"""Batching state writes and acks: the worker's write-behind thread.

Under load many tasks finish at once; writing their states and acking their messages one by one
costs a round trip (or a transaction) each. The writer takes whatever has queued up since its
last flush, stores the states in one ``set_states`` call (every state, in order) and then acks
the finished messages,
in one ``ack_many`` when the broker has it. When idle it flushes each item at once, so latency
does not grow. A message is acked only after its final state is stored (late ack).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .log import logger
from .signature import TaskState

if TYPE_CHECKING:
    from .app import Machinery

__all__ = ["StateWriter"]

#: Most items flushed together.
MAX_BATCH = 512
#: Seconds a batch of intermediate states alone waits for company before it is written.
HOLD = 0.002
_STOP = object()


class _Item:
    __slots__ = ("ack", "done", "state")

    def __init__(self, state: TaskState | None, ack: Any, done: Callable[[], None] | None) -> None:
        self.state = state
        self.ack = ack  # the worker's tracked delivery (``claim()``, ``.delivery``) to ack, or None
        self.done = done  # called once the item is flushed (frees the worker's slot)


class StateWriter:
    """One daemon thread that stores queued states, then acks their messages."""

    def __init__(self, app: Machinery) -> None:
        self.app = app
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="machinery-state-writer", daemon=True)
        self._closed = False
        self._thread.start()

    def put_state(self, state: TaskState) -> None:
        """Store ``state`` soon (intermediate states: RECEIVED, STARTED)."""
        self._queue.put(_Item(state, None, None))

    def write_now(self, state: TaskState) -> None:
        """Store ``state`` after everything queued before it, and return once it is stored."""
        if self._closed:
            self.app.backend.set_state(state)
            return
        stored = threading.Event()
        self._queue.put(_Item(state, None, stored.set))
        stored.wait()

    def put_final(self, state: TaskState, tracked: Any) -> None:
        """Store ``state``, then ack ``tracked.delivery`` (if ``tracked.claim()``)."""
        self._queue.put(_Item(state, tracked, None))

    def close(self) -> None:
        """Flush what is queued and stop the thread."""
        self._queue.put(_STOP)
        self._thread.join(30)
        self._closed = True

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            batch: list[_Item] = []
            stopping = first is _STOP
            if not stopping:
                batch.append(first)
            while len(batch) < MAX_BATCH:
                try:
                    # Only RECEIVED/STARTED so far: nobody waits on them, so linger a moment for the
                    # final states (or more tasks) to share the round trip.
                    linger = HOLD if all(i.ack is None and i.done is None for i in batch) else 0
                    item = self._queue.get(timeout=linger) if linger else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            if batch:
                self._flush(batch)
            if stopping:
                return

    def _flush(self, batch: list[_Item]) -> None:
        # Every state is stored, in order (a task's RECEIVED, STARTED and SUCCESS may share one
        # round trip but none is skipped); then the finished messages are acked.
        self._store([item.state for item in batch if item.state is not None])
        deliveries = [item.ack.delivery for item in batch if item.ack is not None and item.ack.claim()]
        try:
            self._ack(deliveries)
        finally:
            for item in batch:
                if item.done is not None:
                    item.done()

    def _store(self, states: list[TaskState]) -> None:
        delay = 0.1
        while True:
            try:
                self.app.backend.set_states(states)
                return
            except Exception as exc:  # keep the batch: its messages stay unacked until stored
                logger.warning(
                    "could not store %d task states (%s); retrying in %.1fs", len(states), exc, delay
                )
                threading.Event().wait(delay)
                delay = min(delay * 2, 5.0)

    def _ack(self, deliveries: list[Any]) -> None:
        if not deliveries:
            return
        ack_many = getattr(self.app.broker, "ack_many", None)
        if ack_many is not None and len(deliveries) > 1:
            try:
                ack_many(deliveries)
                return
            except Exception as exc:
                logger.warning("batch ack failed (%s); acking one by one", exc)
        for delivery in deliveries:
            try:
                delivery.ack()
            except Exception as exc:
                logger.warning("ack failed (%s); the message will be redelivered", exc)
