"""Batching state writes and acks: the worker's write-behind thread.

Under load many tasks finish at once; writing their states and acking their messages one by one
costs a round trip (or a transaction) each. The writer takes whatever has queued up since its
last flush, stores the states in one ``set_states`` call (every state, in order) and then acks
the finished messages, in one ``ack_many`` when the broker has it. A final state is written at once,
so latency does not grow; an intermediate state (RECEIVED, STARTED) goes with the next final state or
within TICK (50 ms). A message is acked only after its final state is stored (late ack).

A task's states all live in one record, so when a fast task's RECEIVED, STARTED and final state meet in
one batch only the last is written (:func:`coalesce`; the record keeps its creation time). An observer
polling the store can then miss a short-lived RECEIVED or STARTED, never a final or RETRY state, and
never sees states out of order.

Errors are told apart (:func:`is_permanent`): a **permanent** one (the state cannot be encoded or
the store refuses it for good) is never retried: the task's state is replaced by a FAILURE naming
the reason, and when not even that can be stored the message is dead-lettered. A **transient** one
(connection lost, server busy) is retried with back-off while :attr:`StateWriter.stalled` is set,
which stops the worker leasing more messages until the store is back.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from .. import errors
from ..backoff import Backoff
from ..broker import SupportsAckMany, SupportsAckWithStates
from ..log import logger
from ..signature import State, TaskState

if TYPE_CHECKING:
    from ..app import Machinery

__all__ = ["StateWriter", "coalesce", "is_permanent", "nack"]

#: Most items flushed together.
MAX_BATCH = 512
#: Longest an intermediate state (RECEIVED, STARTED) waits for company before it is written: a final
#: state, which wakes the writer at once, usually comes first and takes it along.
TICK = 0.05
#: Seconds without anything queued after which the writer sleeps until the next put wakes it (an idle
#: worker costs no CPU); until then it looks for intermediate states every TICK, so queuing one wakes nobody.
DEEP_IDLE = 1.0


#: What retrying cannot fix. ``PermanentError`` (plugin platform II) joins when it exists.
_PERMANENT: tuple[type[BaseException], ...] = (
    errors.MessageError,
    TypeError,
    ValueError,
    RecursionError,
    OverflowError,
    *((errors.PermanentError,) if hasattr(errors, "PermanentError") else ()),
)


#: States a later state of the same task in the same batch makes redundant (nobody waits on them).
_TRANSIENT_STATES = frozenset({State.RECEIVED, State.STARTED})


def coalesce(states: list[TaskState]) -> list[TaskState]:
    """``states`` without the RECEIVED/STARTED states followed by a later state of the same task in the
    list: one write per task instead of three for a task that ran within one batch. What is written
    stays in order, and the kept state takes the task name and creation time of a dropped one when it
    has none of its own (so the record ends as it would after every write)."""
    last: dict[str, int] = {}
    for index, state in enumerate(states):
        last[state.task_uuid] = index
    if len(last) == len(states):
        return states
    kept: list[TaskState] = []
    dropped: dict[str, TaskState] = {}
    for index, state in enumerate(states):
        if last[state.task_uuid] != index and state.state in _TRANSIENT_STATES:
            dropped.setdefault(state.task_uuid, state)
            continue
        earlier = dropped.pop(state.task_uuid, None)
        if earlier is not None and (
            (not state.task_name and earlier.task_name) or (state.created_at is None and earlier.created_at)
        ):
            state = replace(
                state,
                task_name=state.task_name or earlier.task_name,
                created_at=state.created_at or earlier.created_at,
            )
        kept.append(state)
    return kept


def is_permanent(exc: BaseException) -> bool:
    """True for errors retrying cannot fix (encoding, validation, size limits); False for the
    rest (connections, timeouts, a busy server), which are worth waiting out."""
    return isinstance(exc, _PERMANENT) and not isinstance(exc, (errors.BrokerError, errors.BackendError))


def nack(delivery: Any, requeue: bool = True, delay: float | None = None, reason: str = "") -> None:
    """``delivery.nack(...)``, passing ``reason`` to brokers whose deliveries take one."""
    try:
        delivery.nack(requeue=requeue, delay=delay, reason=reason)
    except TypeError as exc:
        if "reason" not in str(exc):
            raise
        delivery.nack(requeue=requeue, delay=delay)


class _Abandoned(Exception):  # noqa: N818 - internal signal
    """The writer was closed while the store was still down: leave the messages unacked."""


class _Refused(Exception):  # noqa: N818 - internal signal
    """The store refused a write for good (a permanent error)."""


class _Item:
    __slots__ = ("ack", "dead", "done", "release", "state")

    def __init__(
        self, state: TaskState | None, ack: Any, done: Callable[[], None] | None, release: bool = False
    ) -> None:
        self.state = state
        self.ack = ack  # the worker's tracked delivery (``claim()``, ``.delivery``) to ack, or None
        self.done = done  # called once the item is flushed
        self.release = release  # ``ack`` goes to the writer's ``release_many`` once flushed (frees its slot)
        self.dead = ""  # why the message must be dead-lettered instead of acked


class StateWriter:
    """One daemon thread that stores queued states, then acks their messages.

    Producers append to a deque and wake the thread only when it must act: when an item somebody
    waits on (a final state, ``write_now``) arrives, or when it sleeps deeply (nothing queued for
    DEEP_IDLE seconds). Intermediate states wake nobody: the writer, awake every TICK while work comes,
    takes them along with the next final state or at the next tick. Under load that saves a thread
    switch per batch, and a lone task's states do not wake a thread that would compete with it.
    """

    def __init__(self, app: Machinery, release_many: Callable[[list[Any]], None] | None = None) -> None:
        self.app = app
        #: called once per flush with the tracked deliveries of :meth:`put_final` calls without ``done``
        #: (the worker frees their slots under one lock, waking its consumer once, not once per task)
        self._release_many = release_many
        self._ack_broker: Any = None
        self._broker_acks_many = False
        self._broker_acks_with_states = False
        self._items: deque[_Item] = deque()
        self._wake = threading.Condition(threading.Lock())
        #: what the thread is doing: "busy" (flushing), "tick" (awake every TICK) or "idle" (sleeping
        #: until a put wakes it)
        self._mode = "busy"
        #: held while a batch is taken and flushed, by the thread or by a caller flushing inline, so
        #: batches are stored (and acked) in the order they were queued
        self._flushing = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="machinery-state-writer", daemon=True)
        self._closed = False
        self._abandon = threading.Event()
        #: set while the store fails with transient errors: the worker leases nothing meanwhile
        self.stalled = threading.Event()
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
        """Store ``state`` after everything queued before it, and return once it is stored. Raises
        MessageError when the store refused it for good and refused a FAILURE in its place too (as
        ``backend.set_state`` would raise): the caller must not ack the message as if it were stored."""
        if self._closed:
            self.app.backend.set_state(state)
            return
        stored = threading.Event()
        item = _Item(state, None, stored.set)
        self._put(item, urgent=True)
        stored.wait()
        if item.dead:
            raise errors.MessageError(item.dead)

    def put_final(
        self, state: TaskState, tracked: Any, done: Callable[[], None] | None = None, inline: bool = False
    ) -> None:
        """Store ``state``, then ack ``tracked.delivery`` (if ``tracked.claim()``), then call ``done``, or
        without ``done`` hand ``tracked`` to ``release_many`` with the rest of its batch (the worker frees
        the task's slot only then: the prefetch bound counts unstored states).

        ``inline``: the caller knows no other task is running (nothing to batch with), so when the
        thread is not flushing the caller stores what is queued itself: one thread switch less between
        a task's end and its stored result (the latency of an idle worker)."""
        release = done is None and self._release_many is not None
        item = _Item(state, tracked, done, release)
        if inline and not self._closed and self._flushing.acquire(blocking=False):
            try:
                with self._wake:
                    self._items.append(item)
                    batch = self._take(MAX_BATCH)
                self._flush(batch)
            finally:
                self._flushing.release()
            return
        self._put(item, urgent=True)

    def close(self, timeout: float = 30.0) -> None:
        """Flush what is queued and stop the thread. A store still down after ``timeout``
        seconds is given up on: those messages stay unacked and are delivered again."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("state writer: the result store is still failing; leaving messages unacked")
            self._abandon.set()
            self._thread.join(5)
        self._closed = True

    def _put(self, item: _Item, urgent: bool) -> None:
        with self._wake:
            self._items.append(item)
            if self._mode == "idle" or (urgent and self._mode == "tick"):
                self._wake.notify()

    def _loop(self) -> None:
        while True:
            self._wait_for_work()
            with self._flushing:  # a caller flushing inline finishes first (batches stay in order)
                with self._wake:
                    batch = self._take(MAX_BATCH)
                    stopping = self._stopping and not self._items
                if batch:
                    self._flush(batch)
            if stopping:
                return

    def _wait_for_work(self) -> None:
        """Wait until an item somebody waits on is queued, or intermediate states (nobody waits on them)
        have waited up to TICK for a final state to share the round trip; sleep deeply after DEEP_IDLE
        seconds with nothing queued."""
        with self._wake:
            quiet_since = time.monotonic()
            while not self._stopping:
                if self._items:
                    if any(i.ack is not None or i.done is not None for i in self._items):
                        break
                    self._mode = "tick"
                    self._wake.wait(TICK)  # an urgent put wakes it early
                    if self._items:
                        break
                    quiet_since = time.monotonic()  # an inline flush took them
                elif time.monotonic() - quiet_since >= DEEP_IDLE:
                    self._mode = "idle"
                    self._wake.wait()
                    quiet_since = time.monotonic()
                else:
                    self._mode = "tick"
                    self._wake.wait(TICK)
            self._mode = "busy"

    def _take(self, most: int) -> list[_Item]:
        """Up to ``most`` queued items, oldest first (called with ``_wake`` held)."""
        count = min(len(self._items), most)
        return [self._items.popleft() for _ in range(count)]

    def _flush(self, batch: list[_Item]) -> None:
        # Every task's states are stored in order (a RECEIVED or STARTED followed in this batch by a
        # later state of the same task is skipped: coalesce()); then the finished messages are acked.
        try:
            states = coalesce([item.state for item in batch if item.state is not None])
            finished: list[_Item] | None = None
            self._know_broker()
            if states and self._broker_acks_with_states:
                finished = [item for item in batch if item.ack is not None and item.ack.claim()]
                if self._stored_and_acked(states, finished):
                    return
            try:
                self._store(batch, states)
            except _Abandoned:
                return  # closing with the store down: unacked messages come back later
            if finished is None:
                finished = [item for item in batch if item.ack is not None and item.ack.claim()]
            for item in finished:
                if item.dead:
                    self._dead_letter(item.ack.delivery, item.dead)
            self._ack([item.ack.delivery for item in finished if not item.dead])
        finally:
            released = []
            for item in batch:
                if item.done is not None:
                    item.done()
                elif item.release:
                    released.append(item.ack)
            if released and self._release_many is not None:
                self._release_many(released)

    def _know_broker(self) -> None:
        """Note what the broker supports (``ack_many``; storing states and acking in one write), once
        per broker: a runtime Protocol check is slow."""
        broker = self.app.broker
        if broker is not self._ack_broker:
            self._ack_broker = broker
            self._broker_acks_many = isinstance(broker, SupportsAckMany)
            self._broker_acks_with_states = isinstance(broker, SupportsAckWithStates)

    def _stored_and_acked(self, states: list[TaskState], finished: list[_Item]) -> bool:
        """Store ``states`` and ack ``finished`` in one write (e.g. one sqlite transaction): True when
        done. False when the broker cannot with this backend, or the write failed: the usual path then
        stores (retrying, finding the culprits) and acks."""
        broker = cast(SupportsAckWithStates, self.app.broker)
        try:
            return broker.ack_with_states([item.ack.delivery for item in finished], states, self.app.backend)
        except Exception as exc:
            logger.debug("storing states with their acks failed (%s); storing, then acking", exc)
            return False

    def _store(self, batch: list[_Item], states: list[TaskState]) -> None:
        if not states:
            return
        try:
            self._retrying(lambda: self.app.backend.set_states(states), len(states))
        except _Refused:
            for item in batch:  # find the culprits: store one by one
                if item.state is not None:
                    self._store_one(item)

    def _store_one(self, item: _Item) -> None:
        state = item.state
        assert state is not None
        try:
            self._retrying(lambda: self.app.backend.set_state(state), 1)
            return
        except _Refused as refused:
            task = f"{state.task_name or '?'}[{state.task_uuid}]"
            reason = f"state {state.state} of task {task} could not be stored: {refused}"
        logger.error("%s", reason)
        if not (state.is_completed or item.ack is not None or item.done is not None):
            return  # an intermediate state: the final one follows
        failure = TaskState(state.task_uuid, State.FAILURE, task_name=state.task_name, error=reason)
        try:
            self._retrying(lambda: self.app.backend.set_state(failure), 1)
        except _Refused as again:
            item.dead = f"{reason}; nor its FAILURE: {again}"

    def _retrying(self, write: Callable[[], None], count: int) -> None:
        """Run ``write``; transient errors are retried with back-off (the writer is stalled
        meanwhile); a permanent one raises :class:`_Refused`."""
        backoff = Backoff(0.1, 5.0)
        while True:
            try:
                write()
            except Exception as exc:
                if is_permanent(exc):
                    raise _Refused(str(exc) or type(exc).__name__) from exc
                if self._abandon.is_set():
                    raise _Abandoned() from exc
                delay = backoff.next()
                if backoff.attempt == 1:
                    logger.warning(
                        "could not store %d task states (%s); retrying until the store is back", count, exc
                    )
                else:
                    logger.debug("storing task states still fails (%s); next try in %.1fs", exc, delay)
                self.stalled.set()
                self._abandon.wait(delay)
                continue
            if self.stalled.is_set():
                logger.info("result store is reachable again")
                self.stalled.clear()
            return

    @staticmethod
    def _dead_letter(delivery: Any, reason: str) -> None:
        try:
            nack(delivery, requeue=False, reason=reason)
        except Exception as exc:
            logger.warning("dead-lettering failed (%s); the message will be redelivered", exc)

    def _ack(self, deliveries: list[Any]) -> None:
        if not deliveries:
            return
        broker = self.app.broker
        self._know_broker()
        if self._broker_acks_many and len(deliveries) > 1:
            try:
                cast(SupportsAckMany, broker).ack_many(deliveries)
                return
            except Exception as exc:
                logger.warning("batch ack failed (%s); acking one by one", exc)
        for delivery in deliveries:
            try:
                delivery.ack()
            except Exception as exc:
                logger.warning("ack failed (%s); the message will be redelivered", exc)
