"""Stand-ins for ``machinery.delivery.BaseDelivery`` and ``machinery.lease.LeaseKeeper`` (issue 15),
with the same names and the subset of their API this template uses. When the core ships them, broker.py
imports them from the core instead and this file goes away.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from machinery.broker import decode_body
from machinery.signature import Signature

logger = logging.getLogger("machinery.example")


class BaseDelivery:
    """Decodes the body once (never raises), settles once, keeps the body out of ``repr``."""

    def __init__(self, body: bytes, *, queue: str = "", delivery_count: int = 1) -> None:
        self.body = body
        self.queue = queue
        self.signature: Signature | None
        self.signature, self.error = decode_body(body)
        self.delivery_count = max(1, delivery_count)
        self.redelivered = self.delivery_count > 1
        self.settled = False
        self._claim_lock = threading.Lock()

    def __repr__(self) -> str:
        sig = self.signature
        what = f"{sig.name} {sig.uuid}" if sig is not None else f"malformed: {self.error}"
        return f"<{type(self).__name__} {self.queue} {what}>"

    def claim(self) -> bool:
        with self._claim_lock:
            if self.settled:
                return False
            self.settled = True
            return True

    def ack(self) -> None:
        if self.claim():
            self._ack()

    def nack(self, requeue: bool = True, delay: float | None = None, reason: str = "") -> None:
        if self.claim():
            self._nack(requeue, delay, reason)

    def extend(self, seconds: float) -> None:
        if not self.settled:
            self._extend(seconds)

    def _ack(self) -> None:
        raise NotImplementedError

    def _nack(self, requeue: bool, delay: float | None, reason: str) -> None:
        raise NotImplementedError

    def _extend(self, seconds: float) -> None:
        return None


D = TypeVar("D", bound=BaseDelivery)


class LeaseKeeper(Generic[D]):
    """Calls ``renew(live deliveries)`` every ``interval`` seconds on a daemon thread until ``close()``,
    which returns the deliveries still unsettled."""

    def __init__(self, renew: Callable[[list[D]], object], interval: float, *, name: str = "") -> None:
        self._renew = renew
        self.interval = interval
        self.name = name or "machinery-lease-keeper"
        self._lock = threading.Lock()
        self._live: dict[int, D] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, deliveries: Iterable[D]) -> None:
        with self._lock:
            for delivery in deliveries:
                self._live[id(delivery)] = delivery
            if self._thread is None or not self._thread.is_alive():
                self._stop = threading.Event()
                self._thread = threading.Thread(
                    target=self._run, args=(self._stop,), name=self.name, daemon=True
                )
                self._thread.start()

    def live(self) -> list[D]:
        with self._lock:
            for key in [k for k, d in self._live.items() if d.settled]:
                del self._live[key]
            return list(self._live.values())

    def close(self) -> list[D]:
        with self._lock:
            self._stop.set()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)
        live = self.live()
        with self._lock:
            self._live.clear()
        return live

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            try:
                self._renew(self.live())
            except Exception:
                logger.warning("%s: renewing leases failed", self.name, exc_info=True)
