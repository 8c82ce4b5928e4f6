"""``gcppubsub://<project>/<subscription>``: the Google Cloud Pub/Sub broker.

Names
-----
A queue is a **topic** (Go Machinery: topic = routing key). The URL's subscription serves the default
queue (``Config.default_queue``); any other queue ``q`` is consumed through the subscription
``subscription_name.format(queue=q)`` (``q`` itself by default; topics and subscriptions have separate
namespaces). Pub/Sub drops a message published to a topic without subscriptions, so a publish makes
sure the queue's subscription exists first (once per queue and process). With ``create_missing`` off
nothing is created and a missing topic or subscription is a clear :class:`~machinery.errors.BrokerError`
naming it. Subscriptions are created with a dead-letter policy (the queue's dead-letter topic, at most
``max_delivery_attempts`` deliveries), which also makes Pub/Sub count deliveries:
``Delivery.redelivered`` and ``delivery_count`` come from that count.

Ordering
--------
A task with ``BrokerMessageGroupId`` is published with that ordering key. Subscriptions created with
``message_ordering`` on deliver the messages of one key in publish order. Off by default: with it,
Pub/Sub redelivers every later message of a key (acked ones too) whenever one of them is nacked or
held, which is what ETAs, retries and requeues do here.

Consuming (flow control = free slots)
-------------------------------------
:meth:`PubSubBroker.consume` pulls at most ``max_messages`` (the worker's free slots) with a unary
``Pull``. Google's client libraries are thread-safe, so task threads ack, nack and renew directly.
A live delivery's ack deadline is extended by a lease thread every third of the lease, for at most
``max_extension`` seconds in total (then Pub/Sub may redeliver it). Acks happen after the result is
stored (the worker acks late), a batch at a time: :meth:`PubSubBroker.ack_many` sends one
``Acknowledge`` per subscription. A nack sets the ack deadline to 0 (redelivered at once). A pull
returns as many messages as it asks for when they are there (measured on the emulator): the worker's
free slots bound it, not the server.

ETA without holding a slot
--------------------------
Pub/Sub has no delayed delivery. A pulled message whose ETA is in the future is never handed to the
worker: on its first delivery its ack deadline is set to the time left (at most ``hold_window``,
Pub/Sub's 600 s limit), so it comes back when due. Each such hold raises Pub/Sub's delivery count,
so when a held message comes back (count > 1) it is acked and published again as a fresh message
(count 1) — the hop the worker's delivery budget must not see. A message is therefore never run
early, holds no slot and no flow-control credit while it waits, and costs one pull and one publish
per ``hold_window``. Ordering: a held message loses its place among messages with the same ordering
key (Go skips the ETA on Pub/Sub instead).

Dead letters
------------
``nack(requeue=False)`` publishes the body to the queue's dead-letter topic (``dead_letter_topic``,
``{queue}-dead-letters``) with the reason as attributes, then acks the original: Pub/Sub cannot move
one message on demand. The subscription's own dead-letter policy catches messages delivered more than
``max_delivery_attempts`` times. :meth:`PubSubBroker.dead_letters` peeks at them.

What Pub/Sub cannot do
----------------------
``pending()`` and ``delayed()``: no listing without receiving (and thereby leasing) the messages.
``depth()``: the count lives in Cloud Monitoring, not in the Pub/Sub API, so it is ``None``.
``purge()`` seeks the subscription to now where the server implements it; the emulator does not, so
there it drains (pulls and acks until empty).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.api_core import exceptions as gexc
from google.api_core import retry
from google.cloud import pubsub_v1

from machinery import codec
from machinery.broker import BaseBroker, Delivery
from machinery.capabilities import Capability
from machinery.config import Config
from machinery.delivery import BaseDelivery
from machinery.errors import BrokerError
from machinery.lease import LeaseKeeper
from machinery.signature import Signature, now_utc

from .settings import MAX_ACK_DEADLINE, GCPPubSubSettings
from .url import PubSubTarget, check_resource_name, parse_url

__all__ = ["MAX_MESSAGE_BYTES", "PubSubBroker", "PubSubDeadLetter", "PubSubDelivery"]

logger = logging.getLogger(__name__)

#: Pub/Sub's limit for one message's data (10 MB).
MAX_MESSAGE_BYTES = 10_000_000
#: Seconds one call may take, retries of transient errors included, before it counts as failed.
RPC_TIMEOUT = 15.0
#: Retries of transient errors (unavailable, aborted...) within RPC_TIMEOUT, with back-off.
RETRY = retry.Retry(predicate=retry.if_transient_error, initial=0.1, maximum=2.0, timeout=RPC_TIMEOUT)
#: What every call but pull and seek passes: bounded, so an unreachable server fails within seconds.
CALL = {"retry": RETRY, "timeout": RPC_TIMEOUT}
#: Ack ids per ``Acknowledge`` or ``ModifyAckDeadline`` call at most (a request must stay under
#: Pub/Sub's 512 KB; Google's own subscriber sends at most 2,500 a call too).
MAX_ACK_IDS = 2500
#: Seconds a pull waits at most, whatever the caller's timeout (the server may return empty earlier).
MAX_PULL_WAIT = 10.0
#: Pauses between empty pulls that came back at once (seconds, doubling up to the maximum).
MIN_IDLE_PAUSE = 0.05
MAX_IDLE_PAUSE = 0.5


@dataclass(frozen=True)
class PubSubDeadLetter:
    """A message of a queue's dead-letter topic."""

    body: bytes
    reason: str
    queue: str
    delivery_count: int
    time: datetime | None


class PubSubDelivery(BaseDelivery):
    """One pulled message, leased until acked, nacked or its lease runs out."""

    def __init__(self, broker: PubSubBroker, queue: str, subscription: str, received: Any) -> None:
        """``received``: a raw protobuf ``ReceivedMessage`` (see ``PubSubBroker._pull``)."""
        message = received.message
        super().__init__(message.data, queue=queue, delivery_count=received.delivery_attempt)
        self._broker = broker
        self._subscription = subscription
        self._ack_id: str = received.ack_id
        self.message_id: str = message.message_id
        self._message = message
        self._ordering_key: str = message.ordering_key
        self.leased_at = time.monotonic()

    @property
    def published_at(self) -> datetime | None:
        """When this copy was published (a hop publishes a fresh copy)."""
        return _publish_time(self._message)

    def _ack(self) -> None:
        """The task is finished: delete the message."""
        self._broker._acknowledge(self._subscription, [self._ack_id])

    def _nack(self, requeue: bool, delay: float | None, reason: str) -> None:
        """Give the message back (after ``delay`` s), or dead-letter it with ``requeue=False``."""
        broker = self._broker
        if not requeue:
            broker._dead_letter(self, reason or "rejected by the worker")
            broker._acknowledge(self._subscription, [self._ack_id])
        elif delay and delay > 0 and _not_due(self.signature):
            # A planned ETA hop: a fresh message (held again when pulled) keeps the delivery count at 1.
            broker._publish_body(self.queue, self.body, self._ordering_key)
            broker._acknowledge(self._subscription, [self._ack_id])
        else:
            seconds = 0 if not delay or delay <= 0 else min(math.ceil(delay), MAX_ACK_DEADLINE)
            broker._modify_deadline(self._subscription, [self._ack_id], seconds)

    def _extend(self, seconds: float) -> None:
        """Keep the message leased ``seconds`` more (Pub/Sub allows at most 600 at a time)."""
        self._broker._modify_deadline(
            self._subscription, [self._ack_id], min(max(1, math.ceil(seconds)), MAX_ACK_DEADLINE)
        )


class PubSubBroker(BaseBroker):
    """Google Cloud Pub/Sub broker (see the module docs). Nothing connects until first use."""

    capabilities = frozenset(
        {
            Capability.DELAY,
            Capability.REDELIVERY,
            Capability.EXTEND_VISIBILITY,
            Capability.DEAD_LETTER,
            Capability.MULTI_PROCESS,
        }
    )

    def __init__(
        self,
        target: PubSubTarget,
        config: Config | None = None,
        *,
        publisher: Any = None,
        subscriber: Any = None,
    ) -> None:
        """``publisher`` / ``subscriber``: ready ``google.cloud.pubsub_v1`` clients (else built from
        Google's usual configuration on first use, and closed by :meth:`close`)."""
        super().__init__(config)
        self.target = target
        self.settings = GCPPubSubSettings.of(self.config).with_query(target.options, target.describe())
        self._publisher: Any = publisher or self.settings.publisher_client
        self._subscriber: Any = subscriber or self.settings.subscriber_client
        self._own_clients = self._publisher is None and self._subscriber is None
        self._clients_lock = threading.Lock()
        self._ready: set[str] = set()  # queues whose topic and subscription exist
        self._ready_lock = threading.Lock()
        self._leases: LeaseKeeper[PubSubDelivery] = LeaseKeeper(
            self._renew, lambda: max(self.lease / 3, 0.2), name="machinery-pubsub-lease"
        )
        self._idle = threading.Event()  # never set: an interruptible sleep between empty pulls
        self._closed = False

    @classmethod
    def from_url(cls, url: str, config: Config) -> PubSubBroker:
        """A broker for ``gcppubsub://project/subscription`` (no I/O)."""
        return cls(parse_url(url), config)

    def __repr__(self) -> str:
        return f"<PubSubBroker {self.target.describe()}>"

    # names -------------------------------------------------------------------------------------
    @property
    def lease(self) -> int:
        """Seconds a pulled message stays leased without renewal."""
        return self.settings.ack_deadline

    def topic_path(self, queue: str) -> str:
        return f"projects/{self.target.project}/topics/{check_resource_name(queue, 'the queue (topic)')}"

    def subscription_path(self, queue: str) -> str:
        if queue == self.config.default_queue:
            name = self.target.subscription
        else:
            name = check_resource_name(
                self.settings.subscription_name.format(queue=queue), "the subscription"
            )
        return f"projects/{self.target.project}/subscriptions/{name}"

    def dead_letter_path(self, queue: str) -> str:
        name = check_resource_name(
            self.settings.dead_letter_topic.format(queue=queue), "the dead-letter topic"
        )
        return f"projects/{self.target.project}/topics/{name}"

    def dead_letter_subscription_path(self, queue: str) -> str:
        return self.dead_letter_path(queue).replace("/topics/", "/subscriptions/")

    # clients -----------------------------------------------------------------------------------
    def _clients(self) -> tuple[Any, Any]:
        self._check_open()
        with self._clients_lock:
            if self._publisher is None:
                self._publisher = pubsub_v1.PublisherClient(
                    publisher_options=pubsub_v1.types.PublisherOptions(
                        enable_message_ordering=True, retry=RETRY, timeout=RPC_TIMEOUT
                    )
                )
            if self._subscriber is None:
                self._subscriber = pubsub_v1.SubscriberClient()
            return self._publisher, self._subscriber

    @contextmanager
    def _translating(self, what: str) -> Iterator[None]:
        """Google API errors as Machinery errors that say what to do (one place for all of them)."""
        try:
            yield
        except (gexc.PermissionDenied, gexc.Unauthenticated) as exc:
            raise BrokerError(
                f"Pub/Sub refused to {what} in project {self.target.project!r}: {exc.message}; check the "
                "credentials (GOOGLE_APPLICATION_CREDENTIALS) and the IAM roles in the README"
            ) from None
        except gexc.NotFound as exc:
            raise BrokerError(
                f"Pub/Sub could not {what}: {exc.message} (create it, or leave create_missing on)"
            ) from None
        except gexc.GoogleAPICallError as exc:
            raise BrokerError(f"Pub/Sub could not {what}: {exc.message or exc}") from None
        except (gexc.RetryError, TimeoutError) as exc:
            cause = getattr(exc, "cause", None) or exc
            raise BrokerError(
                f"Pub/Sub could not {what}: no answer within {RPC_TIMEOUT:g}s ({cause})"
            ) from None

    def _ensure(self, queue: str) -> None:
        """Make sure the queue's topic and subscription exist (created when ``create_missing``)."""
        if queue in self._ready:
            return
        with self._ready_lock:
            if queue in self._ready:
                return
            publisher, subscriber = self._clients()
            topic, subscription = self.topic_path(queue), self.subscription_path(queue)
            dead_topic = self.dead_letter_path(queue)
            if self.settings.create_missing:
                with self._translating(f"create the topics and subscriptions of queue {queue!r}"):
                    for path in (topic, dead_topic):
                        _create(lambda p=path: publisher.create_topic(request={"name": p}, **CALL))
                    _create(
                        lambda: subscriber.create_subscription(
                            request={
                                "name": self.dead_letter_subscription_path(queue),
                                "topic": dead_topic,
                            },
                            **CALL,
                        )
                    )
                    _create(
                        lambda: subscriber.create_subscription(
                            request={
                                "name": subscription,
                                "topic": topic,
                                "ack_deadline_seconds": max(10, self.settings.ack_deadline),
                                "enable_message_ordering": self.settings.message_ordering,
                                "dead_letter_policy": {
                                    "dead_letter_topic": dead_topic,
                                    "max_delivery_attempts": self.settings.max_delivery_attempts,
                                },
                            },
                            **CALL,
                        )
                    )
            else:
                with self._translating(f"find topic {topic}"):
                    publisher.get_topic(request={"topic": topic}, **CALL)
                with self._translating(f"find subscription {subscription}"):
                    subscriber.get_subscription(request={"subscription": subscription}, **CALL)
            self._ready.add(queue)

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerError(f"{self!r} is closed")

    # publishing --------------------------------------------------------------------------------
    def _message(self, signature: Signature) -> tuple[str, bytes, str]:
        queue = signature.routing_key or self.config.default_queue
        body = codec.encode_signature(signature)
        return queue, body, signature.broker_message_group_id or ""

    def publish(self, signature: Signature) -> None:
        """Publish one task to its queue's topic and wait until Pub/Sub has it."""
        self.publish_many([signature])

    def publish_many(self, signatures: Sequence[Signature]) -> None:
        """Publish several tasks; the client batches them, and every one is confirmed before return."""
        messages = [self._message(sig) for sig in signatures]
        for queue in {queue for queue, _, _ in messages}:
            self._ensure(queue)
        pending = [self._send(queue, body, key) for queue, body, key in messages]
        self._confirm(pending)

    def publish_raw(self, queue: str, body: bytes) -> None:
        """Publish raw bytes (the contract kit's malformed messages). Pub/Sub refuses a message with
        neither data nor attributes, so an empty body travels with an attribute saying so."""
        self._ensure(queue)
        marks = {} if body else {"machinery-empty": "true"}
        self._confirm([self._send(queue, body, "", **marks)])

    def _publish_body(self, queue: str, body: bytes, ordering_key: str) -> None:
        self._confirm([self._send(queue, body, ordering_key)])

    def _send(
        self, queue: str, body: bytes, ordering_key: str, **attributes: str
    ) -> tuple[futures.Future[str], str, str]:
        if len(body) > MAX_MESSAGE_BYTES:
            raise BrokerError(
                f"a message of {len(body):,} bytes is over Pub/Sub's limit of {MAX_MESSAGE_BYTES:,} bytes "
                f"(queue {queue!r}): keep big payloads elsewhere and send a reference"
            )
        publisher, _ = self._clients()
        topic = self.topic_path(queue)
        with self._translating(f"publish to {queue!r}"):
            future: futures.Future[str] = publisher.publish(
                topic, body, ordering_key=ordering_key, **attributes
            )
        return future, topic, ordering_key

    def _confirm(self, pending: Sequence[tuple[futures.Future[str], str, str]]) -> None:
        for future, topic, ordering_key in pending:
            try:
                with self._translating("publish"):
                    future.result(timeout=RPC_TIMEOUT)
            except BrokerError:
                if ordering_key:  # the client pauses a key after a failure: let later publishes through
                    self._publisher.resume_publish(topic, ordering_key)
                raise

    def _dead_letter(self, delivery: PubSubDelivery, reason: str) -> None:
        self._ensure(delivery.queue)
        publisher, _ = self._clients()
        with self._translating(f"dead-letter a message of {delivery.queue!r}"):
            publisher.publish(
                self.dead_letter_path(delivery.queue),
                delivery.body,
                reason=reason[:1024],
                queue=delivery.queue,
                delivery_count=str(delivery.delivery_count),
            ).result(timeout=RPC_TIMEOUT)

    # consuming ---------------------------------------------------------------------------------
    def consume(self, queue: str, max_messages: int, timeout: float) -> list[Delivery]:
        """Lease up to ``max_messages`` due messages of ``queue``, waiting up to ``timeout`` s."""
        if max_messages <= 0:
            return []
        self._ensure(queue)
        _, subscriber = self._clients()
        subscription = self.subscription_path(queue)
        deadline = time.monotonic() + max(timeout, 0.0)
        pause = MIN_IDLE_PAUSE
        while True:
            remaining = deadline - time.monotonic()
            asked = time.monotonic()
            received = self._pull(subscriber, subscription, max_messages, remaining)
            deliveries = self._admit(queue, subscription, received)
            if deliveries or time.monotonic() >= deadline:
                return deliveries
            if not received and time.monotonic() - asked < MIN_IDLE_PAUSE:
                # the server answered "nothing" at once (the emulator does): pause, growing, instead
                # of spinning on empty pulls
                self._idle.wait(min(pause, max(deadline - time.monotonic(), 0.0)))
                pause = min(pause * 2, MAX_IDLE_PAUSE)

    def _pull(self, subscriber: Any, subscription: str, max_messages: int, wait: float) -> list[Any]:
        wait = min(max(wait, 0.05), MAX_PULL_WAIT)
        try:
            response = subscriber.pull(
                request={"subscription": subscription, "max_messages": max_messages},
                timeout=wait,
                retry=None,
            )
        except (gexc.DeadlineExceeded, gexc.RetryError):
            return []  # nothing arrived within the wait
        except gexc.GoogleAPICallError:
            with self._translating(f"pull from {subscription}"):
                raise
        # The raw protobuf messages: reading a field through proto-plus's wrappers costs about 25 times
        # as much, and was the largest cost of a delivery (bench/README.md, gcppubsub).
        return list(type(response).pb(response).received_messages)

    def _admit(self, queue: str, subscription: str, received: list[Any]) -> list[Delivery]:
        """The due messages as deliveries; not-yet-due ones are held or sent on as fresh messages."""
        out: list[PubSubDelivery] = []
        for item in received:
            delivery = PubSubDelivery(self, queue, subscription, item)
            sig = delivery.signature
            held_before = sig is not None and sig.eta is not None and _published_before(delivery, sig.eta)
            if _not_due(sig) and not delivery.redelivered:
                assert sig is not None and sig.eta is not None
                wait = (sig.eta - now_utc()).total_seconds()
                delivery.claim()
                self._modify_deadline(
                    subscription, [item.ack_id], _hold_seconds(wait, self.settings.hold_window)
                )
            elif held_before and delivery.redelivered:
                # Back from a hold (or still not due): hop as a fresh message so the count stays 1.
                delivery.claim()
                self._publish_body(queue, delivery.body, delivery._ordering_key)
                self._acknowledge(subscription, [item.ack_id])
            else:
                out.append(delivery)
        if out and self.lease < 10:
            # Subscriptions have at least 10 s; a shorter lease (tests) is set per message.
            self._modify_deadline(subscription, [d._ack_id for d in out], self.lease)
        self._leases.add(out)
        return list(out)

    # settling ----------------------------------------------------------------------------------
    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack several deliveries with one ``Acknowledge`` call per subscription (the worker's batched
        acks); deliveries of another broker are acked one by one. Each is settled once, as by
        ``ack()``: one settled before is skipped, and the lease keeper no longer renews them. A failure
        is a :class:`~machinery.errors.BrokerError` naming the subscription or delivery (those messages
        come back after their ack deadline), raised once every ack was tried."""
        by_subscription: dict[str, list[str]] = {}
        others: list[Delivery] = []
        for delivery in deliveries:
            if isinstance(delivery, PubSubDelivery) and delivery._broker is self:
                if delivery.claim():
                    by_subscription.setdefault(delivery._subscription, []).append(delivery._ack_id)
            else:
                others.append(delivery)
        failures: list[str] = []
        for subscription, ack_ids in by_subscription.items():
            try:
                self._acknowledge(subscription, ack_ids)
            except BrokerError as exc:
                failures.append(str(exc))
        for delivery in others:  # after ours: their failure must not leave ours claimed but unacked
            try:
                delivery.ack()
            except Exception as exc:
                failures.append(f"ack of {delivery!r} failed: {exc}")
        if failures:
            raise BrokerError("; ".join(failures))

    def _acknowledge(self, subscription: str, ack_ids: list[str]) -> None:
        _, subscriber = self._clients()
        what = (
            f"ack {len(ack_ids)} messages on {subscription}" if len(ack_ids) > 1 else f"ack on {subscription}"
        )
        with self._translating(what):
            for chunk in _chunks(ack_ids):
                try:
                    subscriber.acknowledge(request={"subscription": subscription, "ack_ids": chunk}, **CALL)
                except gexc.InvalidArgument:
                    if len(chunk) == 1:
                        raise
                    # Pub/Sub refuses the whole call for one ack id it does not know: ack one by one,
                    # so that one cannot send the others back
                    if refused := _acknowledge_one_by_one(subscriber, subscription, chunk):
                        raise BrokerError(
                            f"Pub/Sub refused {len(refused)} of {len(chunk)} acks on {subscription}, "
                            f"the first: {refused[0]}"
                        ) from None

    def _modify_deadline(self, subscription: str, ack_ids: list[str], seconds: int) -> None:
        _, subscriber = self._clients()
        with self._translating(f"change an ack deadline on {subscription}"):
            for chunk in _chunks(ack_ids):
                subscriber.modify_ack_deadline(
                    request={"subscription": subscription, "ack_ids": chunk, "ack_deadline_seconds": seconds},
                    **CALL,
                )

    def _renew(self, deliveries: list[PubSubDelivery]) -> None:
        """The lease keeper's call: extend live deliveries by one lease, up to ``max_extension`` each."""
        now = time.monotonic()
        by_subscription: dict[str, list[str]] = {}
        for delivery in deliveries:
            if now - delivery.leased_at < self.settings.max_extension:
                by_subscription.setdefault(delivery._subscription, []).append(delivery._ack_id)
        for subscription, ack_ids in by_subscription.items():
            self._modify_deadline(subscription, ack_ids, self.lease)

    def _give_back(self, deliveries: list[PubSubDelivery]) -> None:
        by_subscription: dict[str, list[str]] = {}
        for delivery in deliveries:
            if delivery.claim():
                by_subscription.setdefault(delivery._subscription, []).append(delivery._ack_id)
        for subscription, ack_ids in by_subscription.items():
            try:
                self._modify_deadline(subscription, ack_ids, 0)
            except BrokerError as exc:  # they come back after their deadline instead
                logger.warning("could not hand %d message(s) back at close: %s", len(ack_ids), exc)

    # inspection --------------------------------------------------------------------------------
    def pending(self, queue: str) -> list[Signature]:
        raise NotImplementedError(
            "Pub/Sub cannot list waiting messages without receiving them; depth() is not in its API either"
        )

    def delayed(self) -> list[Signature]:
        raise NotImplementedError("Pub/Sub keeps delayed messages in the queue itself: they cannot be listed")

    def depth(self, queue: str) -> int | None:
        """Unknown: Pub/Sub reports backlog sizes through Cloud Monitoring only."""
        return None

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[PubSubDeadLetter]:
        """The messages in ``queue``'s dead-letter topic (peeked: they stay there)."""
        name = queue or self.config.default_queue
        self._ensure(name)
        _, subscriber = self._clients()
        subscription = self.dead_letter_subscription_path(name)
        received = self._pull(subscriber, subscription, max(1, min(limit, 1000)), 2.0)
        if received:
            self._modify_deadline(subscription, [r.ack_id for r in received], 0)
        return [
            PubSubDeadLetter(
                body=bytes(r.message.data),
                reason=r.message.attributes.get("reason", "dead-lettered by Pub/Sub's delivery limit"),
                queue=r.message.attributes.get("queue", name),
                delivery_count=int(r.message.attributes.get("delivery_count", "0") or 0),
                time=_publish_time(r.message),
            )
            for r in received
        ]

    def purge(self, queue: str) -> None:
        """Delete every waiting message: seek to now, or drain where seek is not implemented."""
        self._ensure(queue)
        _, subscriber = self._clients()
        subscription = self.subscription_path(queue)
        try:
            subscriber.seek(
                request={"subscription": subscription, "time": now_utc()}, timeout=RPC_TIMEOUT, retry=None
            )
            return
        except gexc.MethodNotImplemented:
            pass  # the emulator: drain instead
        while received := self._pull(subscriber, subscription, 1000, 0.5):
            self._acknowledge(subscription, [r.ack_id for r in received])

    def close(self) -> None:
        """Stop renewing leases and hand unsettled messages back at once (another consumer gets them
        now, not after their deadline); idempotent."""
        if self._closed:
            return
        self._give_back(self._leases.close())
        self._closed = True
        if self._own_clients:
            try:
                if self._publisher is not None:
                    self._publisher.stop()  # flushes batches, then closes its channel
                    self._publisher.transport.close()
                if self._subscriber is not None:
                    self._subscriber.close()
            except Exception:  # closing must not raise
                logger.debug("closing the Pub/Sub clients failed", exc_info=True)


def _chunks(ack_ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ack_ids), MAX_ACK_IDS):
        yield ack_ids[start : start + MAX_ACK_IDS]


def _acknowledge_one_by_one(subscriber: Any, subscription: str, ack_ids: list[str]) -> list[str]:
    """Ack each of ``ack_ids`` on its own call: Pub/Sub's reasons for the ones it refused."""
    refused: list[str] = []
    for ack_id in ack_ids:
        try:
            subscriber.acknowledge(request={"subscription": subscription, "ack_ids": [ack_id]}, **CALL)
        except gexc.InvalidArgument as exc:
            refused.append(str(exc.message))
    return refused


def _create(call: Any) -> None:
    with suppress(gexc.AlreadyExists):
        call()


def _not_due(sig: Signature | None) -> bool:
    return sig is not None and sig.eta is not None and sig.eta > now_utc()


def _published_before(delivery: PubSubDelivery, eta: datetime) -> bool:
    """True when the message was published before its ETA (so it may have been held)."""
    published = delivery.published_at
    return published is not None and published < eta


def _publish_time(message: Any) -> datetime | None:
    """A raw ``PubsubMessage``'s publish time (UTC), None when unset."""
    if not message.HasField("publish_time"):
        return None
    published: datetime = message.publish_time.ToDatetime(tzinfo=UTC)
    return published


def _hold_seconds(wait: float, window: float) -> int:
    return max(1, min(math.ceil(wait), math.floor(window), MAX_ACK_DEADLINE))
