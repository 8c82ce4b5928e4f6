"""Deliberately broken transports: the kit's self-test (test_kit_selftest.py) proves each one fails
the contract tests that should catch it. Importable as ``broken_plugins`` (PYTHONPATH=tests/contract)
so the kit's child processes can load the ``brokenack://`` scheme through ``plugin_modules``."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING

from machinery import codec
from machinery.backend import BaseBackend
from machinery.broker import Delivery
from machinery.capabilities import Capability
from machinery.errors import MessageError
from machinery.plugins import SchemeRow, hookimpl, scheme_of
from machinery.signature import Signature, now_utc
from machinery.transports.memory.backend import MemoryBackend
from machinery.transports.memory.broker import MemoryBroker, MemoryDelivery, _Entry
from machinery.transports.sqlite.broker import SQLiteBroker, SQLiteDelivery

if TYPE_CHECKING:
    from collections.abc import Sequence

    from machinery.broker import Broker
    from machinery.config import Config


class DoubleChordBackend(MemoryBackend):
    """trigger_chord is true twice per group."""

    _calls: Counter[str] = Counter()
    _mutex = threading.Lock()

    def trigger_chord(self, group_uuid: str) -> bool:
        self.group_states(group_uuid)  # unknown groups still raise
        with self._mutex:
            self._calls[group_uuid] += 1
            return self._calls[group_uuid] <= 2


class DroppingBroker(MemoryBroker):
    """Loses every 10th published message."""

    _counter = itertools.count(1)
    _mutex = threading.Lock()

    def publish(self, signature: Signature) -> None:
        with self._mutex:
            n = next(self._counter)
        if n % 10 == 0:
            return
        super().publish(signature)


class NeverRedeliversBroker(MemoryBroker):
    """Claims redelivery, but an unacked message of a closed consumer is gone for good."""

    capabilities = MemoryBroker.capabilities | {Capability.REDELIVERY}


class PollingPushBackend(MemoryBackend):
    """Claims push_wait, but wait() polls every 0.2 s."""

    poll_interval = 0.2
    wait = BaseBackend.wait


class AckEarlyBroker(SQLiteBroker):
    """Acks every message as soon as it is consumed, before the task ran."""

    def consume(self, queue: str, max_messages: int, timeout: float) -> list[Delivery]:
        deliveries = super().consume(queue, max_messages, timeout)
        for delivery in deliveries:
            delivery.ack()
        return deliveries


class UnknownChordFalseBackend(MemoryBackend):
    """trigger_chord answers False for a group it does not know, instead of raising."""

    def trigger_chord(self, group_uuid: str) -> bool:
        try:
            return super().trigger_chord(group_uuid)
        except KeyError:
            return False


# -- issue 15: what the kit did not catch before ----------------------------------------------------
class NoRenewalBroker(SQLiteBroker):
    """Never renews its leases: a task longer than the lease is delivered again meanwhile."""

    def _renew_leases(self, deliveries: Sequence[SQLiteDelivery]) -> int:
        return 0


class NoopAckBroker(SQLiteBroker):
    """ack() forgets the delivery locally but leaves the message leased on the "server"."""

    def _delete(self, deliveries: Sequence[SQLiteDelivery]) -> None:
        return None


class NoopAckManyBroker(SQLiteBroker):
    """ack_many() settles the deliveries locally but leaves the messages leased (ack() works)."""

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            if isinstance(delivery, SQLiteDelivery):
                delivery.claim()


class CloseKeepsLeasesBroker(SQLiteBroker):
    """close() stops renewing but gives nothing back: messages wait for their lease to run out."""

    def close(self) -> None:
        self._keeper.close()
        self._store.close()


class RaisingConsumeBroker(MemoryBroker):
    """consume raises on a body it cannot decode instead of returning a Delivery with error set."""

    def consume(self, queue: str, max_messages: int, timeout: float) -> list[Delivery]:
        deliveries = super().consume(queue, max_messages, timeout)
        for delivery in deliveries:
            if delivery.signature is None:
                raise MessageError(f"cannot decode a message of {queue}: {delivery.error}")
        return deliveries


class LocalEtaBroker(MemoryBroker):
    """A client-side ETA timer: ETA messages stay in the publishing object, which takes them itself
    once due. A consumer that requeues a task with a short ETA always gets it back."""

    def __init__(self, config: Config | None = None, name: str = "") -> None:
        super().__init__(config, name)
        self._mine: list[Signature] = []

    def publish(self, signature: Signature) -> None:
        if signature.eta is not None and signature.eta > now_utc():
            self._mine.append(signature)
            return
        super().publish(signature)

    def consume(self, queue: str, max_messages: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while True:
            now = now_utc()
            due = [s for s in self._mine if s.routing_key == queue and s.eta is not None and s.eta <= now]
            if due and max_messages > 0:
                self._mine.remove(due[0])
                entry = _Entry((0.0, 0, 0), codec.encode_signature(due[0]), queue, deliveries=1)
                return [MemoryDelivery(self, entry)]
            remaining = deadline - time.monotonic()
            got = super().consume(queue, max_messages, max(0.0, min(remaining, 0.01)))
            if got or remaining <= 0:
                return got


class SingleActiveConsumerBroker(MemoryBroker):
    """The first broker object that consumes a queue owns it (like RabbitMQ's single active consumer):
    a second worker on the queue waits while the first one's backlog grows."""

    _owners: dict[str, int] = {}
    _owners_lock = threading.Lock()

    def consume(self, queue: str, max_messages: int, timeout: float) -> list[Delivery]:
        with self._owners_lock:
            owner = self._owners.setdefault(queue, id(self))
        if owner != id(self):
            time.sleep(timeout)
            return []
        return super().consume(queue, max_messages, timeout)


class FreshAfterNackBroker(MemoryBroker):
    """Every delivery says redelivered=False, also after a nack(requeue=True)."""

    def consume(self, queue: str, max_messages: int, timeout: float) -> list[Delivery]:
        deliveries = super().consume(queue, max_messages, timeout)
        for delivery in deliveries:
            delivery.redelivered = False
        return deliveries


class PurgeKeepsEtaBroker(MemoryBroker):
    """purge(queue) deletes the ready messages only; the queue's ETA messages survive it."""

    def purge(self, queue: str) -> None:
        with self._store.cond:
            self._store.ready.pop(queue, None)


@hookimpl
def machinery_schemes() -> list[SchemeRow]:
    return [SchemeRow("brokenack", "broker", "tests/contract")]


@hookimpl
def machinery_broker(url: str, config: Config) -> Broker | None:
    if scheme_of(url) == "brokenack":
        return AckEarlyBroker.from_url("sqlite://" + url[len("brokenack://") :], config)
    return None
