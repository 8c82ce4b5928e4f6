"""``BaseDelivery``: what every broker's delivery shares.

A broker subclasses it and implements ``_ack``, ``_nack`` and ``_extend``; the base class decodes the
body once (a malformed one gives ``signature=None`` and ``error``, never an exception), keeps the
body out of ``repr`` (task arguments may be secret), and settles each delivery once: a second
``ack``/``nack`` is a no-op (logged at DEBUG), so a worker's retry path can never ack a message twice.
"""

from __future__ import annotations

import logging
import threading

from .broker import decode_body
from .signature import Signature

__all__ = ["BaseDelivery"]

logger = logging.getLogger("machinery.delivery")

#: one lock for every delivery's settle-once flag: held for a test-and-set only, so never contended long
_settle_lock = threading.Lock()


class BaseDelivery:
    """One consumed message (implements :class:`machinery.broker.Delivery`).

    ``delivery_count`` is 1 on the first delivery; brokers that cannot count pass None and get 1
    (``redelivered`` still says whether it came back). Subclasses implement :meth:`_ack`,
    :meth:`_nack` and :meth:`_extend`; batch paths (``ack_many``) call :meth:`claim` themselves.
    """

    __slots__ = ("body", "delivery_count", "error", "queue", "redelivered", "settled", "signature")

    def __init__(
        self, body: bytes, *, queue: str = "", redelivered: bool = False, delivery_count: int | None = None
    ) -> None:
        self.body = body
        self.queue = queue
        self.signature: Signature | None
        self.signature, self.error = decode_body(body)
        self.delivery_count = max(1, delivery_count) if delivery_count is not None else 1
        self.redelivered = redelivered or self.delivery_count > 1
        #: True once acked or nacked (by this process)
        self.settled = False

    def __repr__(self) -> str:
        where = f" {self.queue}" if self.queue else ""
        sig = self.signature
        what = f"{sig.name} {sig.uuid}" if sig is not None else f"malformed: {self.error}"
        again = f" delivery {self.delivery_count}" if self.delivery_count > 1 else ""
        again = again or (" redelivered" if self.redelivered else "")
        return f"<{type(self).__name__}{where} {what}{again}>"

    def claim(self) -> bool:
        """Mark the delivery settled; True the first time only. ``ack``/``nack`` call it; a broker's
        batch path calls it for each delivery it settles itself."""
        with _settle_lock:
            if self.settled:
                return False
            self.settled = True
            return True

    def ack(self) -> None:
        """The task is finished: remove the message for good (once; later calls do nothing)."""
        if self.claim():
            self._ack()
        else:
            logger.debug("%r: already settled, ack ignored", self)

    def nack(self, requeue: bool = True, delay: float | None = None, reason: str = "") -> None:
        """Give the message back (after ``delay`` seconds), or dead-letter it with ``requeue=False``
        (``reason`` kept where the broker stores dead letters). Once; later calls do nothing."""
        if self.claim():
            self._nack(requeue, delay, reason)
        else:
            logger.debug("%r: already settled, nack ignored", self)

    def extend(self, seconds: float) -> None:
        """Keep the message leased at least ``seconds`` more (nothing once settled)."""
        if not self.settled:
            self._extend(seconds)

    def _ack(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement _ack")

    def _nack(self, requeue: bool, delay: float | None, reason: str) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement _nack")

    def _extend(self, seconds: float) -> None:
        """Default: nothing (brokers whose leases last while the consumer lives)."""
        return None
