"""Deferred publisher confirms: a producer's publish hands the message to an I/O thread and returns.

A :class:`Outbox` owns one connection and one confirm-mode channel, driven by its own thread (pika's
connections are not thread-safe). :meth:`Outbox.submit` puts messages in the outbox and wakes the
thread, which publishes them (``mandatory``) and keeps each one until RabbitMQ confirms it:

- acked: forgotten;
- returned as unroutable: the topology is declared again and the message sent again, once; returned a
  second time, it fails (see below);
- nacked (RabbitMQ could not take it): sent again, up to :data:`MAX_NACKS` times;
- the connection broke: every unconfirmed message is sent again, in order, on the next connection
  (a message may then arrive twice: delivery is at least once).

:meth:`Outbox.flush` waits until everything submitted before it is confirmed, and raises for messages
that failed; the broker's ``close()`` flushes, and so does interpreter exit when the app was not
closed. While the outbox holds :data:`LIMIT` messages (RabbitMQ down for a while), ``submit`` waits
for room instead of growing without bound.

The channel beneath pika's ``BlockingChannel`` (``_impl``) is used directly, as for the batches of
:class:`~machinery_amqp.connection.Link` (pika's blocking channel waits for every confirm).
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pika.spec

from machinery.backoff import Backoff

from .connection import (
    AMQPAccessError,
    AMQPError,
    AMQPUnavailableError,
    Link,
    LinkPool,
    Publish,
    UnroutableError,
    connect,
)

__all__ = ["LIMIT", "MAX_NACKS", "Outbox"]

logger = logging.getLogger("machinery.amqp")

#: Messages the outbox holds (queued or unconfirmed) before ``submit`` waits for room.
LIMIT = 10_000
#: Seconds between two looks at the outbox while messages flow.
BUSY_POLL = 0.002
#: Times a message RabbitMQ refuses (``basic.nack``) is sent again before it fails.
MAX_NACKS = 5

M = TypeVar("M")


@dataclass(eq=False)
class _Entry(Generic[M]):
    seq: int
    message: M
    sent: Publish | None = None  # what was published for it on the current connection
    prepared: bool = False  # ``prepare`` ran for it (once, before its first publish)
    nacks: int = 0
    returns: int = 0


class Outbox(Generic[M]):
    """Messages published by an I/O thread and kept until confirmed (see the module docs).

    ``target(link, message)`` declares what ``message`` needs on ``link`` (a blocking channel of the
    I/O thread's connection) and says where it goes. ``prepare(messages)``, when given, runs in the I/O
    thread once for each message before its first publish, for a whole batch at once (the broker stores
    the PENDING states there); when it raises, the batch waits and it runs again.
    """

    def __init__(
        self,
        pool: LinkPool,
        target: Callable[[Link, M], Publish],
        *,
        prepare: Callable[[list[M]], None] | None = None,
        limit: int = LIMIT,
    ) -> None:
        self.pool = pool
        self.target = target
        self.prepare = prepare
        self.limit = limit
        self.pid = os.getpid()
        self._cond = threading.Condition()
        self._entries: dict[int, _Entry[M]] = {}  # every unconfirmed message, by submit order
        self._queue: deque[_Entry[M]] = deque()  # not yet published on the current connection
        self._tags: dict[int, _Entry[M]] = {}  # delivery tag -> entry, on the current channel
        self._returned: list[tuple[str, bytes]] = []
        self._failures: list[AMQPError] = []
        self._seq = itertools.count(1)
        self._last_seq = 0
        self._stopping = False
        self._wake_pending = False
        self._idle = True  # the I/O thread waits for a wake-up (else it looks again within BUSY_POLL)
        self._declare_again = False  # a message came back unroutable: a queue may have been deleted
        self._connection: Any = None
        self._thread = threading.Thread(target=self._run, name="machinery-amqp-outbox", daemon=True)
        self._thread.start()
        _at_exit.add(self)

    # called from other threads -----------------------------------------------------------------
    def submit(self, messages: Sequence[M]) -> None:
        """Hand ``messages`` to the I/O thread; waits only while the outbox is full."""
        with self._cond:
            if self._stopping:
                raise AMQPError("the AMQP broker is closed")
            if not self._room_for(len(messages)):
                window = self.pool.reconnect_timeout
                if not self._cond.wait_for(lambda: self._room_for(len(messages)), window):
                    raise AMQPUnavailableError(
                        f"{len(self._entries)} messages wait for RabbitMQ's confirm since {window:.0f}s or "
                        "more (is RabbitMQ reachable?); not accepting more"
                    )
            for message in messages:
                entry = _Entry(next(self._seq), message)
                self._entries[entry.seq] = entry
                self._queue.append(entry)
                self._last_seq = entry.seq
            wake = self._idle and not self._wake_pending
            self._wake_pending = True
        if wake:
            self._wake()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every message submitted before this call is confirmed by RabbitMQ; raise
        :class:`AMQPError` (:class:`UnroutableError` for unroutable ones) for messages that failed
        since the last flush, or :class:`AMQPUnavailableError` when ``timeout`` ran out first."""
        with self._cond:
            last = self._last_seq
            done = self._cond.wait_for(lambda: self._oldest() > last, timeout)
            failures, self._failures = self._failures, []
            left = sum(1 for seq in self._entries if seq <= last)
        if failures:
            first = failures[0]
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise type(first)(f"{first}{more}")
        if not done:
            raise AMQPUnavailableError(
                f"{left} published message(s) still wait for RabbitMQ's confirm after {timeout:.0f}s"
            )

    @property
    def unconfirmed(self) -> int:
        """Messages submitted and not confirmed yet."""
        with self._cond:
            return len(self._entries)

    def close(self, timeout: float) -> None:
        """Flush (up to ``timeout`` seconds), then stop the I/O thread and close its connection."""
        try:
            if os.getpid() == self.pid:
                self.flush(timeout)
        finally:
            with self._cond:
                self._stopping = True
            _at_exit.discard(self)
            self._wake()
            if threading.current_thread() is not self._thread and os.getpid() == self.pid:
                self._thread.join(5.0)

    def _room_for(self, count: int) -> bool:
        """Whether ``count`` more messages fit (a batch larger than the limit fits an empty outbox)."""
        return not self._entries or len(self._entries) + count <= self.limit

    def _oldest(self) -> float:
        return next(iter(self._entries), float("inf"))

    def _wake(self) -> None:
        connection = self._connection
        if connection is not None:
            try:
                connection.add_callback_threadsafe(_nothing)
            except Exception:  # closed: the thread notices on its own
                logger.debug("amqp outbox: wake-up of a closed connection ignored")

    # the I/O thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = Backoff(0.1, 2.0)
        pool = self.pool
        while True:
            if self._stopped():
                return
            try:
                link = Link(connect(pool._parameters(), pool.urls))
            except AMQPAccessError as exc:
                self._fail_all(exc)
                time.sleep(backoff.next())
                continue
            except AMQPError as exc:
                logger.warning("amqp outbox: %s; %d message(s) wait", exc, self.unconfirmed)
                time.sleep(backoff.next())
                continue
            began = time.monotonic()
            try:
                self._serve(link)
            except Exception as exc:
                if not self._stopped():
                    logger.warning(
                        "amqp outbox: lost the connection to RabbitMQ (%s); the %d unconfirmed message(s) "
                        "are sent again once it is back",
                        exc,
                        self.unconfirmed,
                    )
            finally:
                self._teardown(link)
            if time.monotonic() - began > 3.0:
                backoff.reset()
            if self._stopped():
                return
            time.sleep(backoff.next())

    def _stopped(self) -> bool:
        with self._cond:
            return self._stopping

    def _serve(self, link: Link) -> None:
        connection = link.connection
        channel = connection.channel()
        impl: Any = channel._impl  # type: ignore[attr-defined]  # see the module docs
        closed: list[BaseException] = []
        ready: list[bool] = []
        impl.add_on_close_callback(lambda _channel, reason: closed.append(reason))
        impl.add_on_return_callback(self._on_return)
        impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _frame: ready.append(True))
        flush: Callable[..., None] = connection._flush_output  # type: ignore[attr-defined]
        flush(lambda: bool(ready) or bool(closed))
        next_tag = 1
        self._connection = connection
        while True:
            if closed:
                raise closed[0]
            with self._cond:
                if self._stopping and not self._queue:
                    return
                self._wake_pending = False
                batch = list(self._queue)
                self._queue.clear()
                self._idle = not batch
                declare_again, self._declare_again = self._declare_again, False
            if declare_again:
                link.declared.clear()
            if not self._prepared(batch, connection):
                continue
            for entry in batch:
                try:
                    entry.sent = self.target(link, entry.message)
                except Exception as exc:
                    if link.is_open and not link.channel.is_open:  # the declare was refused: permanent
                        link.reset_channel()
                        self._fail(entry, AMQPError(f"RabbitMQ refused a declare for a message: {exc}"))
                        continue
                    with self._cond:  # the connection broke: send it again on the next one
                        self._queue.appendleft(entry)
                    raise
                sent = entry.sent
                with self._cond:
                    self._tags[next_tag] = entry
                next_tag += 1
                impl.basic_publish(
                    sent.exchange, sent.routing_key, sent.body, sent.properties, mandatory=True
                )
            # while messages flow, look again shortly instead of being woken for each one (a wake-up
            # per message costs a syscall and a thread switch in the caller)
            connection.process_data_events(time_limit=BUSY_POLL if batch else 0.25)

    def _prepared(self, batch: list[_Entry[M]], connection: Any) -> bool:
        """Run ``prepare`` for the entries of ``batch`` that need it; on failure put the batch back and
        wait a moment (answering heartbeats meanwhile)."""
        todo = [entry for entry in batch if not entry.prepared]
        if not todo or self.prepare is None:
            return True
        try:
            self.prepare([entry.message for entry in todo])
        except Exception as exc:
            logger.warning(
                "amqp outbox: could not store the PENDING states of %d message(s) (%s); they wait and "
                "are tried again",
                len(todo),
                exc,
            )
            with self._cond:
                self._queue.extendleft(reversed(batch))
            connection.process_data_events(time_limit=0.5)
            return False
        for entry in todo:
            entry.prepared = True
        return True

    def _teardown(self, link: Link) -> None:
        """The connection ended: everything unconfirmed goes back to the queue, in submit order."""
        self._connection = None
        with self._cond:
            pending = {entry.seq: entry for entry in self._tags.values()}
            pending.update((entry.seq, entry) for entry in self._queue)
            self._tags.clear()
            self._returned.clear()
            self._queue = deque(pending[seq] for seq in sorted(pending) if seq in self._entries)
        link.close()

    def _on_return(self, _channel: object, method: Any, _properties: object, body: bytes) -> None:
        with self._cond:
            self._returned.append((method.routing_key, body))

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        with self._cond:
            if method.multiple:
                tags = [tag for tag in self._tags if tag <= method.delivery_tag]
            else:
                tags = [method.delivery_tag]
            for tag in tags:
                entry = self._tags.pop(tag, None)
                if entry is not None:
                    self._settle(entry, acked)
            self._cond.notify_all()

    def _settle(self, entry: _Entry[M], acked: bool) -> None:
        """RabbitMQ answered for ``entry`` (the lock is held)."""
        sent = entry.sent
        returned = sent is not None and (sent.routing_key, sent.body) in self._returned
        if acked and not returned:
            self._entries.pop(entry.seq, None)
            return
        if returned and sent is not None:  # a return comes before its message's ack
            self._returned.remove((sent.routing_key, sent.body))
            entry.returns += 1
            if entry.returns >= 2:
                self._fail_locked(
                    entry,
                    UnroutableError(
                        f"RabbitMQ returned a message as unroutable (routing key {sent.routing_key!r}): no "
                        "queue is bound for it (check amqp.exchange, amqp.exchange_type and amqp.binding_key)"
                    ),
                )
                return
            self._declare_again = True
        else:
            entry.nacks += 1
            if entry.nacks > MAX_NACKS:
                self._fail_locked(
                    entry, AMQPError(f"RabbitMQ refused (nacked) a message {entry.nacks} times")
                )
                return
        self._queue.append(entry)  # sent again by the I/O thread's next round

    def _fail(self, entry: _Entry[M], error: AMQPError) -> None:
        with self._cond:
            self._fail_locked(entry, error)
            self._cond.notify_all()

    def _fail_locked(self, entry: _Entry[M], error: AMQPError) -> None:
        logger.error("amqp outbox: a published message is lost: %s", error)
        self._entries.pop(entry.seq, None)
        self._failures.append(error)

    def _fail_all(self, error: AMQPError) -> None:
        with self._cond:
            entries = list(self._entries.values())
            self._queue.clear()
        for entry in entries:
            self._fail(entry, error)


def _nothing() -> None:
    """A wake-up: ``process_data_events`` returns when a thread-safe callback arrives."""


class _AtExit:
    """Outboxes of this process; at interpreter exit each waits for its confirms (an app that was not
    closed loses nothing it published)."""

    def __init__(self) -> None:
        self._outboxes: weakref.WeakSet[Outbox[Any]] = weakref.WeakSet()
        self._registered = False
        self._lock = threading.Lock()

    def add(self, outbox: Outbox[Any]) -> None:
        with self._lock:
            self._outboxes.add(outbox)
            if not self._registered:
                atexit.register(self.run)
                self._registered = True

    def discard(self, outbox: Outbox[Any]) -> None:
        with self._lock:
            self._outboxes.discard(outbox)

    def run(self) -> None:
        with self._lock:
            outboxes = [o for o in self._outboxes if o.pid == os.getpid()]
        for outbox in outboxes:
            count = outbox.unconfirmed
            if count:
                logger.info(
                    "amqp: waiting for RabbitMQ to confirm %d published message(s) before exit", count
                )
            try:
                outbox.close(outbox.pool.reconnect_timeout)
            except AMQPError as exc:
                logger.error("amqp: at exit, published messages may be lost: %s", exc)


_at_exit = _AtExit()
