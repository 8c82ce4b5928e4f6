"""The Broker protocol: how tasks travel from producers to workers.

Delivery is **at least once**: a consumed message stays owned by the broker until the worker acks
it (after the task finished and its result was stored). A worker that dies without acking loses
nothing: the broker hands the message out again after its lease / visibility timeout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from . import codec
from .config import Config
from .signature import Signature, TaskState

__all__ = [
    "BaseBroker",
    "Broker",
    "DeadLetter",
    "Delivery",
    "SupportsAckFailure",
    "SupportsAckMany",
    "SupportsAckWithStates",
    "SupportsDeadLetters",
    "SupportsDepth",
    "SupportsRawPublish",
    "decode_body",
]


def decode_body(body: bytes) -> tuple[Signature | None, str]:
    """Decode a message body for a :class:`Delivery`: ``(signature, "")``, or ``(None, reason)``
    when it is malformed, so a bad message never raises out of ``consume``."""
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

    def nack(self, requeue: bool = True, delay: float | None = None, reason: str = "") -> None:
        """Give the message back (after ``delay`` seconds when given), or with ``requeue=False``
        dead-letter it (or drop it, when the broker has no dead-letter store). ``reason`` says why;
        a broker that keeps dead letters stores it with the dead letter."""

    def extend(self, seconds: float) -> None:
        """Keep the message leased ``seconds`` longer (a long task is never redelivered meanwhile)."""


@runtime_checkable
class Broker(Protocol):
    """What every broker implements. ``from_url(url, config)`` builds one without any I/O.

    Optional features are separate protocols, checked with ``isinstance``: :class:`SupportsAckMany`,
    :class:`SupportsRawPublish`, :class:`SupportsDeadLetters`, :class:`SupportsDepth`. Errors:
    :class:`~machinery.errors.BrokerError` for what may pass (a lost connection, a timeout),
    :class:`~machinery.errors.PermanentError` for what retrying cannot fix (a message too large).
    """

    capabilities: frozenset[str]

    @classmethod
    def from_url(cls, url: str, config: Config) -> Broker:
        """A broker for ``url``; no I/O (connect on first use)."""

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


@dataclass(frozen=True)
class DeadLetter:
    """A message nacked with ``requeue=False`` (or found unreadable), as a broker keeps it.

    ``reason`` is the one given to ``nack`` ("" when none was, or when the broker cannot store one);
    ``time`` is when it was dead-lettered (UTC); ``delivery_count`` how often it had been delivered
    (1 when the broker cannot count).
    """

    body: bytes
    reason: str
    time: datetime
    delivery_count: int
    queue: str

    @property
    def signature(self) -> Signature | None:
        """The decoded message, or None when the body is malformed."""
        return decode_body(self.body)[0]


@runtime_checkable
class SupportsAckMany(Protocol):
    """A broker that acks several of its deliveries in one round trip (the worker batches acks)."""

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack ``deliveries``; ones of another broker are acked one by one."""


@runtime_checkable
class SupportsAckWithStates(Protocol):
    """A broker that can store task states through a backend and ack deliveries in one write (the
    ``sqlite://`` broker, with a backend on the same file: one transaction instead of two). The worker's
    state writer tries it first; False means nothing was done and it stores, then acks, as usual."""

    def ack_with_states(
        self, deliveries: Sequence[Delivery], states: Sequence[TaskState], backend: object
    ) -> bool:
        """Store ``states`` through ``backend`` and ack ``deliveries``, all or nothing: True when done;
        False (nothing done) when this broker cannot with that backend or those deliveries."""


@runtime_checkable
class SupportsRawPublish(Protocol):
    """A broker that puts a body on a queue as is (tests and interop checks send malformed or
    foreign messages with it). Brokers may take extra keyword arguments (priority, delay)."""

    def publish_raw(self, queue: str, body: bytes) -> object:
        """Put ``body`` on ``queue`` unchanged."""


@runtime_checkable
class SupportsDeadLetters(Protocol):
    """A broker that keeps dead letters where they can be read back."""

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` dead letters of ``queue`` (every queue when None), oldest first."""


@runtime_checkable
class SupportsDepth(Protocol):
    """A broker that counts waiting messages without receiving them (SQS, Pub/Sub)."""

    def depth(self, queue: str) -> int | None:
        """Messages waiting in ``queue`` (approximate where the service is), None when unknown."""


@runtime_checkable
class SupportsAckFailure(Protocol):
    """A delivery that settles the message of a task that ended FAILURE its own way. The worker calls
    ``ack_failure()`` instead of ``ack()`` once the FAILURE is stored; SQS uses it for Go's
    ``StopTaskDeletionOnError`` (Machinery #471): the message is left in the queue, so the queue's
    redrive policy moves it to the dead-letter queue after ``maxReceiveCount`` receives."""

    def ack_failure(self) -> None:
        """The task failed and its FAILURE is stored: settle the message (``ack()`` unless the broker's
        failure policy keeps it). Once, like ``ack``."""


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
