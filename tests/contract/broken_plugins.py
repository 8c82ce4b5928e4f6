"""Deliberately broken transports: the kit's self-test (test_kit_selftest.py) proves each one fails
the contract tests that should catch it. Importable as ``broken_plugins`` (PYTHONPATH=tests/contract)
so the kit's child processes can load the ``brokenack://`` scheme through ``plugin_modules``."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from typing import TYPE_CHECKING

from machinery.backend import BaseBackend
from machinery.capabilities import Capability
from machinery.plugins import SchemeRow, hookimpl, scheme_of
from machinery.signature import Signature
from machinery.transports.memory.backend import MemoryBackend
from machinery.transports.memory.broker import MemoryBroker
from machinery.transports.sqlite.broker import SQLiteBroker

if TYPE_CHECKING:
    from machinery.broker import Broker, Delivery
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


@hookimpl
def machinery_schemes() -> list[SchemeRow]:
    return [SchemeRow("brokenack", "broker", "tests/contract")]


@hookimpl
def machinery_broker(url: str, config: Config) -> Broker | None:
    if scheme_of(url) == "brokenack":
        return AckEarlyBroker.from_url("sqlite://" + url[len("brokenack://") :], config)
    return None
