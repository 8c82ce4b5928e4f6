"""Batching state writes and acks: the worker's write-behind thread.

Under load many tasks finish at once; writing their states and acking their messages one by one
costs a round trip (or a transaction) each. The writer takes whatever has queued up since its
last flush, stores the states in one ``set_states`` call (every state, in order) and then acks
the finished messages, in one ``ack_many`` when the broker has it. When idle it flushes each item
at once, so latency does not grow. A message is acked only after its final state is stored (late ack).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..backoff import Backoff
from ..broker import SupportsAckMany
from ..log import logger
from ..signature import TaskState

if TYPE_CHECKING:
    from ..app import Machinery

__all__ = ["StateWriter"]

#: Most items flushed together.
MAX_BATCH = 512
#: Seconds a batch of intermediate states alone waits for company before it is written.
HOLD = 0.002


class _Item:
    __slots__ = ("ack", "done", "state")

    def __init__(self, state: TaskState | None, ack: Any, done: Callable[[], None] | None) -> None:
        self.state = state
        self.ack = ack  # the worker's tracked delivery (``claim()``, ``.delivery``) to ack, or None
        self.done = done  # called once the item is flushed (frees the worker's slot)


class StateWriter:
    """One daemon thread that stores queued states, then acks their messages.

    Producers append to a deque and wake the thread only when it must act: when it sleeps with
    nothing queued, or when an item somebody waits on (a final state, ``write_now``) arrives while
    it lingers. Intermediate states queued during a linger wake nobody: under load that saves a
    thread switch per state.
    """

    def __init__(self, app: Machinery) -> None:
        self.app = app
        self._items: deque[_Item] = deque()
        self._wake = threading.Condition(threading.Lock())
        #: what the thread is doing: "busy" (flushing), "idle" (nothing queued) or "linger"
        self._mode = "busy"
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="machinery-state-writer", daemon=True)
        self._closed = False
        self._thread.start()

    def put_state(self, state: TaskState) -> None:
        """Store ``state`` soon (intermediate states: RECEIVED, STARTED)."""
        self._put(_Item(state, None, None), urgent=False)

    def put_states(self, states: list[TaskState]) -> None:
        """Store ``states`` soon, in order (intermediate states of several tasks)."""
        with self._wake:
            self._items.extend(_Item(state, None, None) for state in states)
            if self._mode == "idle":
                self._wake.notify()

    def write_now(self, state: TaskState) -> None:
        """Store ``state`` after everything queued before it, and return once it is stored."""
        if self._closed:
            self.app.backend.set_state(state)
            return
        stored = threading.Event()
        self._put(_Item(state, None, stored.set), urgent=True)
        stored.wait()

    def put_final(self, state: TaskState, tracked: Any) -> None:
        """Store ``state``, then ack ``tracked.delivery`` (if ``tracked.claim()``)."""
        self._put(_Item(state, tracked, None), urgent=True)

    def close(self) -> None:
        """Flush what is queued and stop the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(30)
        self._closed = True

    def _put(self, item: _Item, urgent: bool) -> None:
        with self._wake:
            self._items.append(item)
            if self._mode == "idle" or (urgent and self._mode == "linger"):
                self._wake.notify()

    def _loop(self) -> None:
        while True:
            batch, stopping = self._next_batch()
            if batch:
                self._flush(batch)
            if stopping:
                return

    def _next_batch(self) -> tuple[list[_Item], bool]:
        """Wait for work; while only intermediate states are queued (nobody waits on them), linger up
        to HOLD for the final states (or more tasks) to share the round trip."""
        with self._wake:
            self._mode = "idle"
            while not self._items and not self._stopping:
                self._wake.wait()
            if not self._stopping and all(i.ack is None and i.done is None for i in self._items):
                self._mode = "linger"
                self._wake.wait(HOLD)
            self._mode = "busy"
            count = min(len(self._items), MAX_BATCH)
            batch = [self._items.popleft() for _ in range(count)]
            return batch, self._stopping and not self._items

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
        retry = Backoff(0.1, 5.0)
        while True:
            try:
                self.app.backend.set_states(states)
                return
            except Exception as exc:  # keep the batch: its messages stay unacked until stored
                delay = retry.next()
                logger.warning(
                    "could not store %d task states (%s); retrying in %.1fs", len(states), exc, delay
                )
                threading.Event().wait(delay)

    def _ack(self, deliveries: list[Any]) -> None:
        if not deliveries:
            return
        broker = self.app.broker
        if isinstance(broker, SupportsAckMany) and len(deliveries) > 1:
            try:
                broker.ack_many(deliveries)
                return
            except Exception as exc:
                logger.warning("batch ack failed (%s); acking one by one", exc)
        for delivery in deliveries:
            try:
                delivery.ack()
            except Exception as exc:
                logger.warning("ack failed (%s); the message will be redelivered", exc)
