"""The Broker protocol: how tasks travel from producers to workers.

Delivery is **at least once**: a consumed message stays owned by the broker until the worker acks
it (after the task finished and its result was stored). A worker that dies without acking loses
nothing: the broker hands the message out again after its lease / visibility timeout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .config import Config
from .signature import Signature

__all__ = ["BaseBroker", "Broker", "Delivery", "decode_body"]


def decode_body(body: bytes) -> tuple[Signature | None, str]:
    """Decode a message body for a :class:`Delivery`: ``(signature, "")``, or ``(None, reason)``
    when it is malformed, so a bad message never raises out of ``consume``."""
    from . import codec

    try:
        return codec.decode_signature(body), ""
    except Exception as exc:  # MessageError, or whatever else a broken body provokes
        return None, str(exc) or type(exc).__name__


@runtime_checkable
class Delivery(Protocol):
    """One consumed message.

    ``signature`` is ``None`` when the body could not be decoded; ``error`` then says why and
    ``body`` holds the raw bytes, so the worker can fail or dead-letter it without crashing.
    """

    signature: Signature | None
    body: bytes
    error: str
    redelivered: bool

    def ack(self) -> None:
        """The task is finished: remove the message for good."""

    def nack(self, requeue: bool = True, delay: float | None = None) -> None:
        """Give the message back (after ``delay`` seconds when given), or with ``requeue=False``
        dead-letter it (or drop it, when the broker has no dead-letter store)."""

    def extend(self, seconds: float) -> None:
        """Keep the message leased ``seconds`` longer (a long task is never redelivered meanwhile)."""


@runtime_checkable
class Broker(Protocol):
    """What every broker implements. ``from_url(url, config)`` builds one without any I/O."""

    capabilities: frozenset[str]

    def publish(self, signature: Signature) -> None:
        """Put one task on ``signature.routing_key``; honour ``signature.eta``."""

    def publish_many(self, signatures: Sequence[Signature]) -> None:
        """Publish several tasks, in one round trip where the broker can."""

    def consume(self, queue: str, max_messages: int, timeout: float) -> list[Delivery]:
        """Lease up to ``max_messages`` (never more) from ``queue``, waiting up to ``timeout``
        seconds for the first one. An empty list means nothing arrived in time."""

    def pending(self, queue: str) -> list[Signature]:
        """Messages waiting in ``queue``, oldest first (Machinery's GetPendingTasks)."""

    def delayed(self) -> list[Signature]:
        """Messages waiting for their ETA (Machinery's GetDelayedTasks)."""

    def purge(self, queue: str) -> None:
        """Delete every waiting message of ``queue``."""

    def close(self) -> None:
        """Release connections. Idempotent."""


# Optional fast paths a broker may add (the core looks them up with ``getattr``):
#
# ``ack_many(deliveries)``: ack several deliveries of this broker in one round trip.
# ``publish_with_states(signatures, states, backend) -> bool``: store ``states`` (the PENDING
#     records) through ``backend`` and publish ``signatures`` in one round trip, when this broker
#     can do so for that backend (e.g. both on one Redis server); return False to let the core do
#     it in two steps.


class BaseBroker:
    """Shared behaviour for brokers: config, the default capability set, and a naive
    ``publish_many``. Subclasses set ``capabilities`` and implement the rest."""

    capabilities: frozenset[str] = frozenset()

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()

    def publish(self, signature: Signature) -> None:
        raise NotImplementedError

    def publish_many(self, signatures: Sequence[Signature]) -> None:
        for signature in signatures:
            self.publish(signature)

    def pending(self, queue: str) -> list[Signature]:
        raise NotImplementedError(f"{type(self).__name__} cannot list pending tasks")

    def delayed(self) -> list[Signature]:
        raise NotImplementedError(f"{type(self).__name__} cannot list delayed tasks")

    def close(self) -> None:
        return None
