"""``LeaseKeeper``: renews the leases of a broker's live deliveries on a timer.

A consumed message stays leased (invisible to other consumers) for a limited time; a task that runs
longer must have its lease renewed, or it is delivered again while it still runs. A broker creates one
keeper, hands it each delivery it returns from ``consume`` (:meth:`LeaseKeeper.add`), and supplies
``renew(deliveries)``, which renews the leases of those deliveries in as few round trips as it can.

Guarantees:

- one daemon thread per keeper, started on the first :meth:`~LeaseKeeper.add` (or :meth:`~LeaseKeeper.start`),
  calls ``renew`` every ``interval`` seconds with the deliveries not yet settled (settled ones are
  dropped at each tick), and never two calls at once;
- an exception in ``renew`` is logged (a WARNING for the first of a series, then DEBUG) and the next
  try comes sooner, backing off from a tenth of the interval up to the interval: a lease is never given
  up because of one failed round trip;
- :meth:`~LeaseKeeper.close` stops the thread and waits for it (so no renewal runs after it returns)
  and hands back the deliveries still live, for the broker to give back at once; the keeper may be
  used again afterwards (it starts afresh);
- in a child process after ``fork()`` the keeper starts empty: the parent's leases stay the parent's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from . import backoff
from .delivery import BaseDelivery
from .forking import at_fork

__all__ = ["LeaseKeeper"]

logger = logging.getLogger("machinery.lease")

D = TypeVar("D", bound=BaseDelivery)


class LeaseKeeper(Generic[D]):
    """Renews the leases of live deliveries every ``interval`` seconds by calling ``renew(deliveries)``.

    ``interval`` may be a callable, read before each wait (reloadable settings). With
    ``renew_when_idle=True`` ``renew`` is called even when no delivery is live (a broker whose lease
    is per consumer, not per message, keeps the consumer alive that way).
    """

    def __init__(
        self,
        renew: Callable[[list[D]], object],
        interval: float | Callable[[], float],
        *,
        name: str = "machinery-lease-keeper",
        renew_when_idle: bool = False,
    ) -> None:
        self._renew = renew
        self._interval = interval
        self.name = name
        self.renew_when_idle = renew_when_idle
        self._reset()
        at_fork(self, "_reset")

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, D] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def __repr__(self) -> str:
        return f"<LeaseKeeper {self.name}: {len(self._live)} live>"

    @property
    def interval(self) -> float:
        """Seconds between renewals."""
        value = self._interval() if callable(self._interval) else self._interval
        return max(0.001, float(value))

    def add(self, deliveries: Iterable[D]) -> None:
        """Keep the leases of ``deliveries`` alive until they are settled; starts the thread."""
        with self._lock:
            for delivery in deliveries:
                self._live[id(delivery)] = delivery
        self.start()

    def discard(self, delivery: D) -> None:
        """Stop renewing ``delivery`` (settled ones are dropped at the next tick anyway)."""
        with self._lock:
            self._live.pop(id(delivery), None)

    def live(self) -> list[D]:
        """The deliveries not yet settled, oldest first; drops the settled ones."""
        with self._lock:
            settled = [key for key, delivery in self._live.items() if delivery.settled]
            for key in settled:
                del self._live[key]
            return list(self._live.values())

    def start(self) -> None:
        """Start the renewing thread if it does not run (idempotent)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(self._stop,), name=self.name, daemon=True)
            self._thread.start()

    def renew_now(self) -> None:
        """Renew the live deliveries' leases now, in the calling thread (exceptions propagate)."""
        live = self.live()
        if live or self.renew_when_idle:
            self._renew(live)

    def close(self, timeout: float = 5.0) -> list[D]:
        """Stop renewing and wait for the thread (up to ``timeout`` seconds); the deliveries still
        live, forgotten by the keeper, for the broker to give back. Idempotent."""
        with self._lock:
            self._stop.set()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        live = self.live()
        with self._lock:
            self._live.clear()
        return live

    def _run(self, stop: threading.Event) -> None:
        failures = 0
        wait = self.interval
        while not stop.wait(wait):
            try:
                self.renew_now()
            except Exception as exc:
                failures += 1
                interval = self.interval
                wait = backoff.delay(failures, interval / 10, interval)
                if failures == 1:
                    logger.warning("%s: renewing leases failed (%s); retrying in %.1fs", self.name, exc, wait)
                else:
                    logger.debug("%s: renewing leases still fails", self.name, exc_info=True)
                continue
            if failures:
                logger.info("%s: renewing leases works again after %d failure(s)", self.name, failures)
                failures = 0
            wait = self.interval
