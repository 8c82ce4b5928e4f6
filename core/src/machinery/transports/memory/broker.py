"""``memory://NAME``: a broker inside one process, for tests and eager mode.

Messages are kept encoded, exactly as they would travel, so codec problems show up here too.
Unacked messages stay leased until acked or nacked; there is no lease expiry (one process).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ... import codec
from ...broker import BaseBroker, DeadLetter, Delivery
from ...capabilities import Capability
from ...config import Config
from ...delivery import BaseDelivery
from ...signature import Signature
from .store import shared

__all__ = ["MemoryBroker", "MemoryDelivery"]


@dataclass(order=True)
class _Entry:
    sort_key: tuple[float, int, int]
    body: bytes = field(compare=False)
    queue: str = field(compare=False)
    deliveries: int = field(default=0, compare=False)


class _Store:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.ready: dict[str, list[_Entry]] = {}  # heap per queue: (-priority, seq)
        self.delayed: list[tuple[float, int, _Entry]] = []  # heap by due time
        self.dead: list[DeadLetter] = []  # oldest first
        self.dead_at: list[float] = []  # monotonic time of each dead letter, for expiry
        self.seq = itertools.count()


class MemoryDelivery(BaseDelivery):
    """A leased in-memory message (no ``__slots__``: tests wrap a delivery's methods on the instance)."""

    def __init__(self, broker: MemoryBroker, entry: _Entry) -> None:
        super().__init__(entry.body, queue=entry.queue, delivery_count=entry.deliveries)
        self._broker = broker
        self._entry = entry

    def _ack(self) -> None:
        return None  # taken from the queue at consume: nothing left to delete

    def _nack(self, requeue: bool, delay: float | None, reason: str) -> None:
        if requeue:
            self._broker._put(self._entry, delay or 0.0)
        else:
            self._broker._dead_letter(self._entry, reason)


class MemoryBroker(BaseBroker):
    """In-process broker with priorities, ETA, dead letters and pending lists."""

    capabilities = frozenset(
        {
            Capability.DELAY,
            Capability.PRIORITY,
            Capability.PENDING_LIST,
            Capability.DELAYED_LIST,
            Capability.DEAD_LETTER,
            Capability.FIFO,
        }
    )

    def __init__(self, config: Config | None = None, name: str = "") -> None:
        super().__init__(config)
        self._store = shared("broker", f"memory://{name}", _Store)

    @classmethod
    def from_url(cls, url: str, config: Config) -> MemoryBroker:
        from .store import store_name

        return cls(config, store_name(url))

    # producing -------------------------------------------------------------------------------
    def publish(self, signature: Signature) -> None:
        self.publish_raw(signature.routing_key, codec.encode_signature(signature), signature)

    def publish_many(self, signatures: Sequence[Signature]) -> None:
        for signature in signatures:
            self.publish(signature)

    def publish_raw(self, queue: str, body: bytes, signature: Signature | None = None) -> None:
        """Put ``body`` on ``queue`` as is (tests use it for malformed messages)."""
        priority = signature.priority if signature else 0
        delay = 0.0
        if signature is not None and signature.eta is not None:
            delay = signature.eta.timestamp() - time.time()
        entry = _Entry((-priority, next(self._store.seq), 0), body, queue)
        self._put(entry, delay)

    def _put(self, entry: _Entry, delay: float) -> None:
        store = self._store
        with store.cond:
            entry.sort_key = (entry.sort_key[0], next(store.seq), 0)
            if delay > 0:
                heapq.heappush(store.delayed, (time.monotonic() + delay, entry.sort_key[1], entry))
            else:
                heapq.heappush(store.ready.setdefault(entry.queue, []), entry)
            store.cond.notify_all()

    def _dead_letter(self, entry: _Entry, reason: str) -> None:
        store = self._store
        now = time.monotonic()
        letter = DeadLetter(entry.body, reason, datetime.now(UTC), entry.deliveries, entry.queue)
        with store.cond:
            expired = bisect.bisect_left(store.dead_at, now - self.config.dead_letter_expire_in)
            del store.dead[:expired], store.dead_at[:expired]
            store.dead.append(letter)
            store.dead_at.append(now)

    # consuming -------------------------------------------------------------------------------
    def consume(self, queue: str, max_messages: int, timeout: float) -> list[Delivery]:
        store = self._store
        deadline = time.monotonic() + timeout
        with store.cond:
            while True:
                self._promote_due()
                ready = store.ready.get(queue)
                if ready:
                    taken = [heapq.heappop(ready) for _ in range(min(max_messages, len(ready)))]
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                store.cond.wait(min(remaining, self._next_due_in()))
        for entry in taken:
            entry.deliveries += 1
        return [MemoryDelivery(self, entry) for entry in taken]

    def _promote_due(self) -> None:
        store, now = self._store, time.monotonic()
        while store.delayed and store.delayed[0][0] <= now:
            entry = heapq.heappop(store.delayed)[2]
            heapq.heappush(store.ready.setdefault(entry.queue, []), entry)

    def _next_due_in(self) -> float:
        if not self._store.delayed:
            return 3600.0
        return max(0.0, self._store.delayed[0][0] - time.monotonic())

    # inspecting ------------------------------------------------------------------------------
    def pending(self, queue: str) -> list[Signature]:
        with self._store.cond:
            self._promote_due()
            entries = sorted(self._store.ready.get(queue, []))
        return [codec.decode_signature(e.body) for e in entries]

    def depth(self, queue: str) -> int:
        """How many messages :meth:`pending` would list."""
        with self._store.cond:
            self._promote_due()
            return len(self._store.ready.get(queue, []))

    def delayed(self) -> list[Signature]:
        with self._store.cond:
            entries = [e for _, _, e in sorted(self._store.delayed, key=lambda t: (t[0], t[1]))]
        return [codec.decode_signature(e.body) for e in entries]

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` messages of ``queue`` (every queue when None) nacked without requeue,
        oldest first."""
        with self._store.cond:
            letters = [d for d in self._store.dead if queue is None or d.queue == queue]
        return letters[: max(0, limit)]

    def purge(self, queue: str) -> None:
        with self._store.cond:
            self._store.ready.pop(queue, None)
            self._store.delayed = [d for d in self._store.delayed if d[2].queue != queue]
            heapq.heapify(self._store.delayed)
