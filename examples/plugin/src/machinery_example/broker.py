"""``ExampleBroker``: FIFO queues with ETAs, leases renewed while a delivery lives, redelivery.

The lease model every broker with leases follows:

- ``consume`` leases each message it returns for ``lease`` seconds, owned by this broker object;
- a :class:`LeaseKeeper` renews the leases of the deliveries not yet settled every ``renew`` seconds,
  so a task longer than the lease is never delivered twice while its worker lives;
- ``ack``/``nack`` act only while the lease is still this delivery's (a stale delivery, whose lease ran
  out and whose message went to another consumer, settles nothing);
- ``close`` stops renewing and gives every unsettled message back at once;
- a lease that is not renewed (its consumer vanished) runs out and the message is delivered again,
  with ``redelivered=True``.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Sequence

from machinery import codec
from machinery.broker import BaseBroker, Delivery
from machinery.capabilities import Capability
from machinery.config import Config
from machinery.delivery import BaseDelivery
from machinery.lease import LeaseKeeper
from machinery.signature import Signature

from .store import Message, Store, next_id, store_for
from .url import parse_url

__all__ = ["ExampleBroker", "ExampleDelivery"]


class ExampleDelivery(BaseDelivery):
    """One leased message; ``signature`` is None (and ``error`` says why) for a malformed body."""

    def __init__(self, broker: ExampleBroker, message: Message) -> None:
        super().__init__(message.body, queue=message.queue, delivery_count=message.deliveries)
        self._broker = broker
        self._message = message
        self._generation = message.deliveries

    def _ours(self) -> bool:
        """The lease is still this delivery's (with the store's condition held)."""
        leased = self._broker.store.leased.get(self._message.id)
        return (
            leased is not None
            and leased[2] == self._broker.owner
            and self._message.deliveries == self._generation
        )

    def _ack(self) -> None:
        with self._broker.store.cond:
            if self._ours():
                del self._broker.store.leased[self._message.id]

    def _nack(self, requeue: bool, delay: float | None, reason: str) -> None:
        # this transport keeps no dead letters: requeue=False drops the message (reason is not stored)
        store = self._broker.store
        with store.cond:
            if self._ours():
                del store.leased[self._message.id]
                if requeue:
                    self._broker.put(self._message, delay or 0.0)

    def _extend(self, seconds: float) -> None:
        store = self._broker.store
        with store.cond:
            if self._ours():
                message, until, owner = store.leased[self._message.id]
                store.leased[self._message.id] = (message, max(until, time.monotonic() + seconds), owner)


class ExampleBroker(BaseBroker):
    """Queues of one ``example://NAME`` store. ``from_url`` does no I/O (nothing to connect here)."""

    capabilities = frozenset(
        {
            Capability.DELAY,
            Capability.FIFO,
            Capability.PENDING_LIST,
            Capability.REDELIVERY,
            Capability.EXTEND_VISIBILITY,
        }
    )

    def __init__(self, url: str, config: Config | None = None) -> None:
        super().__init__(config)
        target = parse_url(url, config)
        self.store: Store = store_for(target.name)
        self.lease = target.settings.lease
        self.owner = uuid.uuid4().hex
        self._keeper: LeaseKeeper[ExampleDelivery] = LeaseKeeper(
            self._renew, target.settings.renew, name=f"example-lease-{self.owner[:8]}"
        )

    @classmethod
    def from_url(cls, url: str, config: Config) -> ExampleBroker:
        return cls(url, config)

    def __repr__(self) -> str:
        return f"<ExampleBroker lease={self.lease:g}s>"

    # producing -------------------------------------------------------------------------------------
    def publish(self, signature: Signature) -> None:
        queue = signature.routing_key or self.config.default_queue
        delay = signature.eta.timestamp() - time.time() if signature.eta is not None else 0.0
        with self.store.cond:
            self.put(Message(next_id(), queue, codec.encode_signature(signature)), delay)

    def publish_raw(self, queue: str, body: bytes) -> None:
        """Put ``body`` on ``queue`` as it is (the kit uses it for malformed messages)."""
        with self.store.cond:
            self.put(Message(next_id(), queue, bytes(body)), 0.0)

    def put(self, message: Message, delay: float) -> None:
        """Queue ``message`` now or after ``delay`` seconds (with the store's condition held)."""
        if delay > 0:
            self.store.delayed.append((time.monotonic() + delay, message))
        else:
            self.store.ready.setdefault(message.queue, deque()).append(message)
        self.store.cond.notify_all()

    # consuming -------------------------------------------------------------------------------------
    def consume(self, queue: str, max_messages: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        store = self.store
        with store.cond:
            while True:
                next_due = self._promote()
                ready = store.ready.get(queue)
                if ready and max_messages > 0:
                    taken = [ready.popleft() for _ in range(min(max_messages, len(ready)))]
                    until = time.monotonic() + self.lease
                    for message in taken:
                        message.deliveries += 1
                        store.leased[message.id] = (message, until, self.owner)
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                store.cond.wait(min(remaining, next_due))
        deliveries = [ExampleDelivery(self, m) for m in taken]
        self._keeper.add(deliveries)
        return list(deliveries)

    def _promote(self) -> float:
        """Move due ETAs and run-out leases back to their queues; seconds until the next is due."""
        store, now = self.store, time.monotonic()
        next_due = 3600.0
        for item in sorted(store.delayed, key=lambda d: (d[0], d[1].id)):
            if item[0] <= now:
                store.delayed.remove(item)
                store.ready.setdefault(item[1].queue, deque()).append(item[1])
            else:
                next_due = min(next_due, item[0] - now)
        for message_id, (message, until, _owner) in list(store.leased.items()):
            if until <= now:
                del store.leased[message_id]
                store.ready.setdefault(message.queue, deque()).appendleft(message)
            else:
                next_due = min(next_due, until - now)
        return next_due

    def _renew(self, deliveries: Sequence[ExampleDelivery]) -> None:
        """The LeaseKeeper's callback: push the leases of live deliveries to now + lease."""
        for delivery in deliveries:
            delivery.extend(self.lease)

    # inspecting ------------------------------------------------------------------------------------
    def pending(self, queue: str) -> list[Signature]:
        """Messages a consumer would get now, in order (ETA messages are not due yet: not listed)."""
        with self.store.cond:
            self._promote()
            bodies = [m.body for m in self.store.ready.get(queue, ())]
        return [codec.decode_signature(b) for b in bodies]

    def purge(self, queue: str) -> None:
        """Delete the waiting messages of ``queue``, ETA messages included (leased ones stay)."""
        with self.store.cond:
            self.store.ready.pop(queue, None)
            self.store.delayed = [d for d in self.store.delayed if d[1].queue != queue]

    def close(self) -> None:
        """Stop renewing and give back every unsettled delivery at once; idempotent. The broker may
        be used again afterwards."""
        for delivery in self._keeper.close():
            delivery.nack(requeue=True)
