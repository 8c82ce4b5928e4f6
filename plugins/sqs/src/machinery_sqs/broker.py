"""The SQS broker: long polling, late delete, a visibility heartbeat, ETA hops, FIFO queues, dead letters.

- **Publish**: ``SendMessage`` to the queue named by the routing key (``SendMessageBatch``, 10 a call, for
  ``publish_many``). The body is the task's Machinery JSON, so Go workers read it. A body SQS cannot carry
  (not UTF-8 text) travels base64-encoded with the message attribute ``machinery-body-encoding``.
- **ETA**: ``DelaySeconds`` (whole seconds, rounded up: never early). An ETA further than 900 s (the
  ``delay_hop_seconds`` setting) is reached in hops: a message received before its ETA is sent again as a
  fresh message with the next delay and the old one deleted. FIFO queues reject per-message delays: there
  a message received early is held invisible (``ChangeMessageVisibility``) until due, which also holds
  the later messages of its message group.
- **Consume**: ``ReceiveMessage`` with long polling, asking for exactly the free slots (10 a call, more
  calls for more). The message stays in the queue, invisible, until ``ack`` deletes it (after the result is
  stored). While a task runs, the heartbeat (the core's ``LeaseKeeper``) renews its visibility every third
  of the visibility timeout, so a long task is never handed to a second worker; a killed worker's
  messages come back after one timeout.
- **nack**: ``ChangeMessageVisibility`` to 0 (or to the asked delay). ``nack(requeue=False)`` sends the
  message to the dead-letter queue (the queue's redrive target, else the ``dead_letter_queue`` setting)
  and then deletes it: SQS cannot move one message on demand.
- **FIFO** (``.fifo`` queues): ``MessageGroupId`` from ``broker_message_group_id`` (default setting
  ``message_group_id``); the deduplication id is the task UUID plus its retry, requeue and hop counts, so a
  retry sent again within SQS's 5-minute window is not dropped as a duplicate.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import threading
import time
import uuid as uuidlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from machinery import codec
from machinery.broker import BaseBroker, Delivery
from machinery.capabilities import Capability
from machinery.config import Config
from machinery.delivery import BaseDelivery
from machinery.errors import BrokerError
from machinery.lease import LeaseKeeper
from machinery.signature import Signature, now_utc

from .client import ClientHolder, describe_error, error_code
from .settings import MAX_VISIBILITY_SECONDS, SQSSettings
from .url import AWSTarget, parse_broker_url

__all__ = ["DeadLetter", "MessageTooLargeError", "SQSBroker", "SQSDelivery"]

logger = logging.getLogger("machinery.sqs")

#: message attribute names this package sets (Go workers ignore message attributes)
BODY_ENCODING = "machinery-body-encoding"
HOP = "machinery-hop"
DEAD_LETTER_REASON = "machinery-dead-letter-reason"
#: SQS's batch size for SendMessageBatch, DeleteMessageBatch, ChangeMessageVisibilityBatch, ReceiveMessage
BATCH = 10
#: characters SQS accepts in a message body (the XML 1.0 set)
_NOT_SQS_TEXT = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_DEDUP_UNSAFE = re.compile(r"[^A-Za-z0-9!-/:-@\[-`{-~]")
_QUEUE_MISSING = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
_DEFAULT_MAX_SIZE = 262_144


class MessageTooLargeError(BrokerError, ValueError):
    """A message is over the queue's size limit: sending it again cannot help."""


@dataclass(frozen=True)
class DeadLetter:
    """A message in a dead-letter queue, as :meth:`SQSBroker.dead_letters` lists it."""

    body: bytes
    reason: str
    message_id: str


@dataclass
class _Queue:
    name: str
    url: str
    fifo: bool
    #: the queue's own visibility timeout (used when the setting is None)
    visibility: int
    max_size: int
    #: the redrive policy's dead-letter queue ARN, when the queue has one
    redrive_target: str = ""
    dead_letter_url: str = field(default="", repr=False)


def _wire_body(body: bytes) -> tuple[str, dict[str, Any]]:
    """The SQS message body for ``body`` and the attributes it needs (base64 for non-text bodies)."""
    try:
        text = body.decode("utf-8")
        if _NOT_SQS_TEXT.search(text) is None:
            return text, {}
    except UnicodeDecodeError:
        pass
    encoded = base64.b64encode(body).decode("ascii")
    return encoded, {BODY_ENCODING: {"DataType": "String", "StringValue": "base64"}}


def _body_of(message: dict[str, Any]) -> bytes:
    text: str = message.get("Body", "")
    encoding = message.get("MessageAttributes", {}).get(BODY_ENCODING, {}).get("StringValue")
    if encoding == "base64":
        try:
            return base64.b64decode(text, validate=True)
        except ValueError:
            pass  # not ours after all: hand over the text, the decoder reports what is wrong
    return text.encode("utf-8")


def _size(body: str, attributes: dict[str, Any]) -> int:
    """The size SQS counts: the body plus each attribute's name, type and value."""
    total = len(body.encode("utf-8"))
    for name, value in attributes.items():
        total += len(name.encode()) + len(value["DataType"].encode())
        total += len(str(value.get("StringValue", "")).encode())
    return total


def _chunks(items: Sequence[Any], size: int = BATCH) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class SQSDelivery(BaseDelivery):
    """One received message (the core's :class:`~machinery.delivery.BaseDelivery`: decoded once, body
    kept out of ``repr``, settled once). ``sqs_queue`` is the queue it came from."""

    def __init__(self, broker: SQSBroker, queue: _Queue, message: dict[str, Any], body: bytes) -> None:
        receive_count = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        super().__init__(body, queue=queue.name, delivery_count=receive_count)
        self.broker = broker
        self.sqs_queue = queue
        self.receipt: str = message["ReceiptHandle"]
        self.message_id: str = message.get("MessageId", "")
        self.attributes: dict[str, Any] = message.get("MessageAttributes", {})
        self.received_at = time.monotonic()
        #: seconds this message stays invisible after a receive or a renewal
        self.visibility = queue.visibility
        if self.signature is not None:
            self.signature.sqs_receipt_handle = self.receipt  # as Go does: a task can read it

    def _ack(self) -> None:
        """Delete the message: the task is finished and its result stored."""
        self.broker._ack([self])

    def _nack(self, requeue: bool, delay: float | None, reason: str) -> None:
        """Make the message visible again (after ``delay`` seconds), or with ``requeue=False`` send it
        to the dead-letter queue and delete it."""
        if requeue:
            self.broker._requeue(self, delay or 0.0)
        else:
            self.broker._dead_letter(self, reason or self.error or "rejected")

    def ack_failure(self) -> None:
        """The task failed and its FAILURE is stored: delete the message, or, with Go's
        ``StopTaskDeletionOnError`` (the signature's flag or the ``stop_task_deletion_on_error``
        setting), leave it in the queue for its redrive policy (Machinery #471)."""
        asked = self.signature is not None and self.signature.stop_task_deletion_on_error
        if not (asked or self.broker._live("stop_task_deletion_on_error")):
            self.ack()
        elif self.claim():
            self.broker._keep_for_redrive(self)

    def _extend(self, seconds: float) -> None:
        """Keep the message invisible ``seconds`` longer (SQS caps it at 12 h after the receive)."""
        self.visibility = max(self.visibility, math.ceil(seconds))  # renewals never shorten it
        self.broker._change_visibility(self, math.ceil(seconds))


class SQSBroker(BaseBroker):
    """The SQS broker. Build it with :meth:`from_url` (no I/O); it connects on first use."""

    capabilities = frozenset(
        {
            Capability.DELAY,
            Capability.DEAD_LETTER,
            Capability.EXTEND_VISIBILITY,
            Capability.REDELIVERY,
            Capability.MULTI_PROCESS,
        }
    )

    def __init__(self, target: AWSTarget, config: Config | None = None, **options: Any) -> None:
        super().__init__(config)
        self.target = target
        #: the URL's query and the keywords override the config's section for this broker
        self.settings = SQSSettings.of(self.config).with_query(target.options, target.where, values=options)
        self._overridden = frozenset(target.options) | frozenset(options)
        self._clients = ClientHolder(target, self.config, self.settings.client)
        self._queues: dict[str, _Queue] = {}
        self._queues_lock = threading.Lock()
        #: the visibility heartbeat: renews the held messages of running tasks
        self._keeper: LeaseKeeper[SQSDelivery] = LeaseKeeper(
            self._renew, self._renew_interval, name="machinery-sqs-visibility"
        )
        self._closed = False

    @classmethod
    def from_url(cls, url: str, config: Config, **options: Any) -> SQSBroker:
        """A broker for ``url`` (see :mod:`machinery_sqs.url`); ``options`` are settings."""
        return cls(parse_broker_url(url), config, **options)

    def __repr__(self) -> str:
        return f"<SQSBroker {self.target.where}>"

    # -- plumbing ------------------------------------------------------------------------------------
    def _live(self, name: str) -> Any:
        """A reloadable setting: read at each use, unless the URL or a keyword fixed it."""
        if name in self._overridden:
            return getattr(self.settings, name)
        return getattr(SQSSettings.of(self.config), name)

    @property
    def client(self) -> Any:
        """The boto3 SQS client of this process."""
        return self._clients.get()

    def _call(self, operation: str, queue: str, **kwargs: Any) -> Any:
        """``client.<operation>(**kwargs)`` with AWS errors as :class:`BrokerError` naming the URL."""
        try:
            return getattr(self.client, operation)(**kwargs)
        except BrokerError:
            raise
        except Exception as exc:
            if error_code(exc) in _QUEUE_MISSING:
                with self._queues_lock:
                    self._queues.pop(queue, None)  # deleted behind our back: look it up again next time
            raise BrokerError(
                f"SQS {operation} on queue {queue!r} at {self.target.where} failed: {describe_error(exc)}"
            ) from exc

    def _queue(self, name: str, create: bool = True) -> _Queue | None:
        """The queue ``name`` (looked up once per process; created when missing and allowed)."""
        queue = self._queues.get(name)
        if queue is not None:
            return queue
        with self._queues_lock:
            queue = self._queues.get(name)
            if queue is None:
                url = self._lookup(name)
                if url is None:
                    if not create:
                        return None
                    url = self._create(name)
                queue = self._describe(name, url)
                self._queues[name] = queue
            return queue

    def _need_queue(self, name: str) -> _Queue:
        queue = self._queue(name)
        assert queue is not None
        return queue

    def _lookup(self, name: str) -> str | None:
        kwargs: dict[str, Any] = {"QueueName": name}
        if self.target.account:
            kwargs["QueueOwnerAWSAccountId"] = self.target.account
        try:
            return str(self.client.get_queue_url(**kwargs)["QueueUrl"])
        except Exception as exc:
            if error_code(exc) in _QUEUE_MISSING:
                return None
            raise BrokerError(
                f"SQS GetQueueUrl of queue {name!r} at {self.target.where} failed: {describe_error(exc)}"
            ) from exc

    def _create(self, name: str) -> str:
        if not self.settings.create_missing:
            raise BrokerError(
                f"SQS queue {name!r} does not exist at {self.target.where} and create_missing is off: "
                "create it (with its dead-letter queue) or allow sqs:CreateQueue and turn create_missing on"
            )
        attributes: dict[str, str] = {}
        if name.endswith(".fifo"):
            attributes["FifoQueue"] = "true"
        if self._live("visibility_timeout") is not None:
            attributes["VisibilityTimeout"] = str(self._live("visibility_timeout"))
        dead_letter = self.settings.dead_letter_name(name)
        if self.settings.max_receive_count and dead_letter:
            arn = self._queue_arn(self._lookup(dead_letter) or self._create_plain(dead_letter))
            policy = {"deadLetterTargetArn": arn, "maxReceiveCount": self.settings.max_receive_count}
            attributes["RedrivePolicy"] = json.dumps(policy)
        url = self._call("create_queue", name, QueueName=name, Attributes=attributes)["QueueUrl"]
        logger.info("created SQS queue %s", name)
        return str(url)

    def _create_plain(self, name: str) -> str:
        """A dead-letter queue: FIFO when its name says so, messages kept 14 days (SQS's maximum)."""
        attributes = {"MessageRetentionPeriod": "1209600"}
        if name.endswith(".fifo"):
            attributes["FifoQueue"] = "true"
        url = self._call("create_queue", name, QueueName=name, Attributes=attributes)["QueueUrl"]
        logger.info("created SQS dead-letter queue %s", name)
        return str(url)

    def _queue_arn(self, url: str) -> str:
        response = self._call("get_queue_attributes", url, QueueUrl=url, AttributeNames=["QueueArn"])
        return str(response["Attributes"]["QueueArn"])

    def _describe(self, name: str, url: str) -> _Queue:
        names = ["VisibilityTimeout", "MaximumMessageSize", "RedrivePolicy", "FifoQueue"]
        attributes = self._call("get_queue_attributes", name, QueueUrl=url, AttributeNames=names)
        attributes = attributes.get("Attributes", {})
        redrive = ""
        if attributes.get("RedrivePolicy"):
            try:
                redrive = str(json.loads(attributes["RedrivePolicy"]).get("deadLetterTargetArn", ""))
            except ValueError:
                redrive = ""
        return _Queue(
            name=name,
            url=url,
            fifo=attributes.get("FifoQueue") == "true" or name.endswith(".fifo"),
            visibility=int(attributes.get("VisibilityTimeout", 30)),
            max_size=int(attributes.get("MaximumMessageSize", _DEFAULT_MAX_SIZE)),
            redrive_target=redrive,
        )

    def _queue_name(self, signature: Signature) -> str:
        return signature.routing_key or self.config.default_queue

    # -- publishing ----------------------------------------------------------------------------------
    def _on_queue(self, name: str, send: Callable[[_Queue], None]) -> None:
        """``send(queue)``; when the queue was deleted since it was looked up (a cleanup job, a reset test
        server), it is looked up again (created when allowed) and ``send`` tried once more."""
        try:
            send(self._need_queue(name))
            return
        except BrokerError as exc:
            if error_code(exc.__cause__ or exc) not in _QUEUE_MISSING or not self.settings.create_missing:
                raise
        send(self._need_queue(name))  # _call dropped the stale entry

    def publish(self, signature: Signature) -> None:
        """Send one task to ``signature.routing_key``; an ETA becomes ``DelaySeconds`` (in hops)."""
        body = codec.encode_signature(signature)

        def send(queue: _Queue) -> None:
            entry = self._entry(queue, body, signature)
            entry.pop("Id")
            self._send(queue, entry)

        self._on_queue(self._queue_name(signature), send)

    def publish_many(self, signatures: Sequence[Signature]) -> None:
        """Send several tasks with ``SendMessageBatch`` (10 a call, per queue)."""
        by_queue: dict[str, list[Signature]] = defaultdict(list)
        for signature in signatures:
            by_queue[self._queue_name(signature)].append(signature)
        for name, group in by_queue.items():

            def send(queue: _Queue, group: list[Signature] = group) -> None:
                entries = [
                    self._entry(queue, codec.encode_signature(s), s, str(i)) for i, s in enumerate(group)
                ]
                self._send_batches(queue, entries)

            self._on_queue(name, send)

    def publish_raw(self, queue: str, body: bytes | str) -> None:
        """Put raw bytes on ``queue`` (tests of malformed messages, bridges from other producers)."""
        data = body.encode("utf-8") if isinstance(body, str) else bytes(body)

        def send(target: _Queue) -> None:
            entry = self._entry(target, data, None)
            entry.pop("Id")
            self._send(target, entry)

        self._on_queue(queue, send)

    def _entry(
        self, queue: _Queue, body: bytes, signature: Signature | None, entry_id: str = "0", hop: int = 0
    ) -> dict[str, Any]:
        """A SendMessage(Batch) entry: body, attributes, delay (standard) or group/dedup ids (FIFO)."""
        text, attributes = _wire_body(body)
        if hop:
            attributes[HOP] = {"DataType": "Number", "StringValue": str(hop)}
        size = _size(text, attributes)
        if size > queue.max_size:
            what = f"task {signature.name}[{signature.uuid}]" if signature is not None else "message"
            raise MessageTooLargeError(
                f"{what} is {size} bytes, over the {queue.max_size}-byte message limit of SQS queue "
                f"{queue.name!r}: pass large data by reference (e.g. an S3 key)"
            )
        entry: dict[str, Any] = {"Id": entry_id, "MessageBody": text}
        if attributes:
            entry["MessageAttributes"] = attributes
        if queue.fifo:
            group = signature.broker_message_group_id if signature is not None else ""
            entry["MessageGroupId"] = group or self.settings.message_group_id
            entry["MessageDeduplicationId"] = _dedup_id(signature, hop)
        elif signature is not None and signature.eta is not None:
            delay = self._delay_of(signature)
            if delay:
                entry["DelaySeconds"] = delay
        return entry

    def _delay_of(self, signature: Signature) -> int:
        """Whole seconds until the ETA, rounded up (never early), at most one hop."""
        assert signature.eta is not None
        remaining = (signature.eta - now_utc()).total_seconds()
        if remaining <= 0:
            return 0
        return min(math.ceil(remaining), self.settings.delay_hop_seconds)

    def _send(self, queue: _Queue, entry: dict[str, Any]) -> None:
        try:
            self._call("send_message", queue.name, QueueUrl=queue.url, **entry)
        except BrokerError as exc:
            too_large = _too_large(exc, queue)
            if too_large is None:
                raise
            raise too_large from exc.__cause__

    def _send_batches(self, queue: _Queue, entries: list[dict[str, Any]]) -> None:
        for batch in _batches_within(entries, queue.max_size):
            response = self._call("send_message_batch", queue.name, QueueUrl=queue.url, Entries=list(batch))
            failed = response.get("Failed", [])
            if failed:
                retry = [e for e in batch if e["Id"] in {f["Id"] for f in failed if not f.get("SenderFault")}]
                blamed = [f for f in failed if f.get("SenderFault")]
                if blamed:
                    reasons = "; ".join(f"{f.get('Code')}: {f.get('Message')}" for f in blamed[:3])
                    raise BrokerError(
                        f"SQS refused {len(blamed)} of {len(batch)} messages for queue {queue.name!r} at "
                        f"{self.target.where}: {reasons}"
                    )
                for entry in retry:  # server-side hiccup: once more, one by one
                    single = dict(entry)
                    single.pop("Id")
                    self._send(queue, single)

    # -- consuming -----------------------------------------------------------------------------------
    def consume(self, queue: str, max_messages: int, timeout: float) -> list[Delivery]:
        """Receive up to ``max_messages``, waiting up to ``timeout`` for the first. Received messages
        stay invisible (the heartbeat renews them) until settled.

        SQS long polls last whole seconds (at most ``wait_time_seconds``): ``timeout`` is rounded to the
        nearest second, and one under half a second is one short poll and a pause for the rest of it
        (a worker polling every 0.2 s, to notice ``quit()`` quickly, makes 5 requests a second when
        idle; at 1 s, the default, one).
        """
        if max_messages <= 0:
            return []
        target = self._need_queue(queue)
        deadline = time.monotonic() + timeout
        got: list[Delivery] = []
        while True:
            ask = min(BATCH, max_messages - len(got))
            wait = 0 if got else self._wait_seconds(deadline - time.monotonic())
            messages = self._receive(target, ask, wait)
            got.extend(self._accept(target, messages))
            if len(got) >= max_messages:
                return got
            if messages and len(messages) == ask:
                continue  # a full batch: more may be waiting
            remaining = deadline - time.monotonic()
            if got or remaining <= 0:
                return got
            if wait == 0:  # a short poll found nothing: no hot loop
                time.sleep(min(remaining, 1.0))
                if time.monotonic() >= deadline:
                    return got

    def _wait_seconds(self, remaining: float) -> int:
        """Whole seconds of long polling nearest to ``remaining`` (0: a short poll), at most
        ``wait_time_seconds``. Nearest, not rounded down: the worker jitters its 1 s poll to 0.75-1.25 s,
        and rounding down made a third of its polls a short poll and a blind pause, in which a new
        message waited up to 0.9 s (p90 of a round trip ~1 s in ``make bench``). A consume may so
        return up to 0.5 s after its timeout."""
        longest: int = self._live("wait_time_seconds")
        return max(0, min(longest, math.floor(remaining + 0.5)))

    def _receive(self, queue: _Queue, count: int, wait: int) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "QueueUrl": queue.url,
            "MaxNumberOfMessages": count,
            "WaitTimeSeconds": wait,
            "MessageAttributeNames": ["All"],
            "MessageSystemAttributeNames": ["ApproximateReceiveCount", "SentTimestamp"],
        }
        if self._live("visibility_timeout") is not None:
            kwargs["VisibilityTimeout"] = self._live("visibility_timeout")
        messages: list[dict[str, Any]] = self._call("receive_message", queue.name, **kwargs).get(
            "Messages", []
        )
        return messages

    def _accept(self, queue: _Queue, messages: list[dict[str, Any]]) -> list[Delivery]:
        """Deliveries for the due messages; those received before their ETA go back to waiting."""
        accepted: list[Delivery] = []
        visibility = self._live("visibility_timeout") or queue.visibility
        heartbeat = self._live("visibility_heartbeat")
        for message in messages:
            delivery = SQSDelivery(self, queue, message, _body_of(message))
            delivery.visibility = visibility
            signature = delivery.signature
            if signature is not None and signature.eta is not None and signature.eta > now_utc():
                self._wait_more(delivery, signature)
                continue
            accepted.append(delivery)
        if heartbeat:
            self._keeper.add(d for d in accepted if isinstance(d, SQSDelivery))
        return accepted

    def _wait_more(self, delivery: SQSDelivery, signature: Signature) -> None:
        """A message received before its ETA: the next hop (a fresh message), or on FIFO queues kept
        invisible until due."""
        delivery.claim()  # settled here: the worker never sees it
        queue = delivery.sqs_queue
        try:
            if queue.fifo:
                assert signature.eta is not None
                remaining = (signature.eta - now_utc()).total_seconds()
                self._change_visibility(delivery, min(math.ceil(remaining), MAX_VISIBILITY_SECONDS))
                return
            hop = int(delivery.attributes.get(HOP, {}).get("StringValue", "0")) + 1
            entry = self._entry(queue, delivery.body, signature, hop=hop)
            entry.pop("Id")
            self._send(queue, entry)
            self._delete(queue, [delivery])
        except BrokerError as exc:  # it stays in the queue and comes back after its visibility timeout
            logger.warning("could not re-delay %r until its ETA: %s", delivery, exc)

    # -- settling ------------------------------------------------------------------------------------
    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Delete several messages with ``DeleteMessageBatch`` (10 a call, per queue)."""
        mine = [d for d in deliveries if isinstance(d, SQSDelivery) and d.claim()]
        self._ack(mine)
        for delivery in deliveries:
            if not isinstance(delivery, SQSDelivery):
                delivery.ack()

    def _ack(self, deliveries: Sequence[SQSDelivery]) -> None:
        by_queue: dict[str, list[SQSDelivery]] = defaultdict(list)
        for delivery in deliveries:
            self._keeper.discard(delivery)
            by_queue[delivery.sqs_queue.name].append(delivery)
        for group in by_queue.values():
            self._delete(group[0].sqs_queue, group)

    def _delete(self, queue: _Queue, deliveries: Sequence[SQSDelivery]) -> None:
        if len(deliveries) == 1:
            self._call("delete_message", queue.name, QueueUrl=queue.url, ReceiptHandle=deliveries[0].receipt)
            return
        for batch in _chunks(deliveries):
            entries = [{"Id": str(i), "ReceiptHandle": d.receipt} for i, d in enumerate(batch)]
            response = self._call("delete_message_batch", queue.name, QueueUrl=queue.url, Entries=entries)
            for failure in response.get("Failed", []):
                # the receipt expired (visibility ran out): the message will be delivered again
                logger.warning(
                    "SQS could not delete a message from %s: %s", queue.name, failure.get("Message")
                )

    def _requeue(self, delivery: SQSDelivery, delay: float) -> None:
        self._keeper.discard(delivery)
        seconds = math.ceil(delay) if delay > 0 else 0
        held = time.monotonic() - delivery.received_at
        if seconds + held < MAX_VISIBILITY_SECONDS:
            self._change_visibility(delivery, seconds)
            return
        # beyond SQS's 12 hours of visibility: a fresh message waits (in hops) instead
        signature = delivery.signature
        if signature is None:
            self._change_visibility(delivery, 0)
            return
        signature.eta = now_utc() + timedelta(seconds=delay)
        entry = self._entry(delivery.sqs_queue, codec.encode_signature(signature), signature, hop=1)
        entry.pop("Id")
        self._send(delivery.sqs_queue, entry)
        self._delete(delivery.sqs_queue, [delivery])

    def _keep_for_redrive(self, delivery: SQSDelivery) -> None:
        """StopTaskDeletionOnError: stop renewing the failed task's message and leave it. It comes back
        after its visibility timeout; SQS moves it to the dead-letter queue once its receive count
        passes the redrive policy's ``maxReceiveCount`` (the worker's ``max_deliveries`` dead-letters it
        explicitly if that comes first)."""
        self._keeper.discard(delivery)
        queue = delivery.sqs_queue
        if queue.redrive_target:
            logger.info(
                "%r failed; its message stays in %s for the redrive policy (StopTaskDeletionOnError, "
                "receive %d)",
                delivery,
                queue.name,
                delivery.delivery_count,
            )
        else:
            logger.warning(
                "%r failed; its message stays in %s (StopTaskDeletionOnError) but the queue has no redrive "
                "policy: it runs again after the visibility timeout until worker.max_deliveries gives up",
                delivery,
                queue.name,
            )

    def _change_visibility(self, delivery: SQSDelivery, seconds: int) -> None:
        queue = delivery.sqs_queue
        self._call(
            "change_message_visibility",
            queue.name,
            QueueUrl=queue.url,
            ReceiptHandle=delivery.receipt,
            VisibilityTimeout=max(0, min(seconds, MAX_VISIBILITY_SECONDS)),
        )

    def _renew_interval(self) -> float:
        """Seconds between two heartbeats: a third of the shortest visibility timeout in use (the
        setting, else the queues' own), at least 0.5 s. Read before each wait (the setting reloads)."""
        configured = self._live("visibility_timeout")
        shortest = configured or min((q.visibility for q in list(self._queues.values())), default=30)
        return max(0.5, shortest / 3)

    def _renew(self, deliveries: list[SQSDelivery]) -> None:
        """The heartbeat: push each held message's visibility one full timeout ahead, one batch call per
        10 messages of a queue. A message whose receipt no longer works (deleted, or its visibility ran
        out and another consumer has it) is dropped from the heartbeat."""
        by_queue: dict[str, list[SQSDelivery]] = defaultdict(list)
        for delivery in deliveries:
            by_queue[delivery.sqs_queue.name].append(delivery)
        for group in by_queue.values():
            queue = group[0].sqs_queue
            for batch in _chunks(group):
                entries = [
                    {"Id": str(i), "ReceiptHandle": d.receipt, "VisibilityTimeout": d.visibility}
                    for i, d in enumerate(batch)
                ]
                response = self._call(
                    "change_message_visibility_batch", queue.name, QueueUrl=queue.url, Entries=entries
                )
                for failure in response.get("Failed", []):
                    lost = batch[int(failure["Id"])]
                    self._keeper.discard(lost)
                    if not lost.settled:  # a settled one was just deleted: its receipt is gone, as expected
                        reason = failure.get("Message")
                        logger.warning("the visibility of %r could not be renewed: %s", lost, reason)

    def _dead_letter(self, delivery: SQSDelivery, reason: str) -> None:
        self._keeper.discard(delivery)
        queue = delivery.sqs_queue
        url = self._dead_letter_url(queue)
        if url:
            text, attributes = _wire_body(delivery.body)
            attributes[DEAD_LETTER_REASON] = {
                "DataType": "String",
                "StringValue": reason[:1000] or "rejected",
            }
            entry: dict[str, Any] = {"MessageBody": text, "MessageAttributes": attributes}
            if url.endswith(".fifo"):
                entry["MessageGroupId"] = self.settings.message_group_id
                entry["MessageDeduplicationId"] = _clean_dedup(f"{delivery.message_id}-dead")
            self._call("send_message", queue.name, QueueUrl=url, **entry)
        else:
            logger.warning("%r rejected and deleted: queue %s has no dead-letter queue", delivery, queue.name)
        self._delete(queue, [delivery])

    def _dead_letter_url(self, queue: _Queue) -> str:
        """The redrive target of ``queue``, else the ``dead_letter_queue`` setting's queue (created when
        missing and allowed); empty when there is none."""
        if queue.dead_letter_url:
            return queue.dead_letter_url
        if queue.redrive_target:
            name = queue.redrive_target.rsplit(":", 1)[-1]
            account = queue.redrive_target.split(":")[4] if queue.redrive_target.count(":") >= 5 else ""
            kwargs: dict[str, Any] = {"QueueName": name}
            if account:
                kwargs["QueueOwnerAWSAccountId"] = account
            url = str(self._call("get_queue_url", name, **kwargs)["QueueUrl"])
        else:
            name = self.settings.dead_letter_name(queue.name)
            if not name:
                return ""
            found = self._lookup(name)
            if found is None and not self.settings.create_missing:
                raise BrokerError(
                    f"the dead-letter queue {name!r} of SQS queue {queue.name!r} does not exist at "
                    f"{self.target.where} and create_missing is off"
                )
            url = found or self._create_plain(name)
        queue.dead_letter_url = url
        return url

    # -- inspection ----------------------------------------------------------------------------------
    def depth(self, queue: str) -> int | None:
        """Approximate number of messages waiting in ``queue`` (SQS's ApproximateNumberOfMessages; None
        when the queue does not exist). SQS counts are eventually consistent: a second or so behind."""
        target = self._queue(queue, create=False)
        if target is None:
            return None
        names = ["ApproximateNumberOfMessages"]
        response = self._call("get_queue_attributes", queue, QueueUrl=target.url, AttributeNames=names)
        return int(response["Attributes"]["ApproximateNumberOfMessages"])

    def counts(self, queue: str) -> dict[str, int]:
        """SQS's approximate counts of ``queue``: ``waiting``, ``in_flight`` (received, not deleted) and
        ``delayed``; all 0 for a missing queue."""
        target = self._queue(queue, create=False)
        if target is None:
            return {"waiting": 0, "in_flight": 0, "delayed": 0}
        names = {
            "waiting": "ApproximateNumberOfMessages",
            "in_flight": "ApproximateNumberOfMessagesNotVisible",
            "delayed": "ApproximateNumberOfMessagesDelayed",
        }
        response = self._call(
            "get_queue_attributes", queue, QueueUrl=target.url, AttributeNames=list(names.values())
        )
        return {key: int(response["Attributes"].get(attr, 0)) for key, attr in names.items()}

    def pending(self, queue: str) -> list[Signature]:
        """Not possible on SQS: a message cannot be read without receiving it (which counts toward its
        redrive limit). Use :meth:`depth` or :meth:`counts` for the approximate numbers."""
        raise NotImplementedError(
            "SQS cannot list waiting messages without receiving them; "
            "use broker.depth(queue) or broker.counts(queue)"
        )

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` messages in ``queue``'s dead-letter queue, left in place (each is received
        with a short visibility timeout and made visible again)."""
        target = self._queue(queue, create=False)
        if target is None:
            return []
        url = self._dead_letter_url(target)
        if not url:
            return []
        letters: dict[str, DeadLetter] = {}
        receipts: list[str] = []
        try:
            while len(letters) < limit:
                response = self._call(
                    "receive_message",
                    queue,
                    QueueUrl=url,
                    MaxNumberOfMessages=min(BATCH, limit - len(letters)),
                    WaitTimeSeconds=0,
                    VisibilityTimeout=30,
                    MessageAttributeNames=["All"],
                )
                messages = response.get("Messages", [])
                if not messages:
                    break
                for message in messages:
                    receipts.append(message["ReceiptHandle"])
                    reason = message.get("MessageAttributes", {}).get(DEAD_LETTER_REASON, {})
                    letters[message["MessageId"]] = DeadLetter(
                        _body_of(message), str(reason.get("StringValue", "")), message["MessageId"]
                    )
        finally:
            for batch in _chunks(receipts):
                entries = [
                    {"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": 0} for i, r in enumerate(batch)
                ]
                self._call("change_message_visibility_batch", queue, QueueUrl=url, Entries=entries)
        return list(letters.values())

    def purge(self, queue: str) -> None:
        """Delete every waiting message of ``queue`` (``PurgeQueue``; SQS allows one purge a minute per
        queue, so within that minute the visible messages are received and deleted instead)."""
        target = self._queue(queue, create=False)
        if target is None:
            return
        try:
            self.client.purge_queue(QueueUrl=target.url)
        except Exception as exc:
            if error_code(exc) not in ("AWS.SimpleQueueService.PurgeQueueInProgress", "PurgeQueueInProgress"):
                raise BrokerError(
                    f"SQS PurgeQueue of {queue!r} at {self.target.where} failed: {describe_error(exc)}"
                ) from exc
            self._drain(target)

    def _drain(self, queue: _Queue) -> None:
        while messages := self._receive(queue, BATCH, 0):
            deliveries = [SQSDelivery(self, queue, m, b"") for m in messages]
            self._delete(queue, deliveries)

    def close(self) -> None:
        """Stop the heartbeat and make the messages still held visible again at once. Idempotent."""
        if self._closed:
            return
        self._closed = True
        left = [d for d in self._keeper.close() if d.claim()]
        for delivery in left:
            try:
                self._change_visibility(delivery, 0)
            except BrokerError as exc:
                logger.info("%r stays invisible until its timeout: %s", delivery, exc)
        self._clients.close()


def _clean_dedup(text: str) -> str:
    return _DEDUP_UNSAFE.sub("_", text)[:128]


def _dedup_id(signature: Signature | None, hop: int) -> str:
    """FIFO deduplication id: the task UUID with its retry, requeue and hop counts (a retry or a requeue
    within SQS's 5-minute window is a new message, not a duplicate). Raw bodies get a random id."""
    if signature is None:
        return uuidlib.uuid4().hex
    requeues = signature.headers.get("machinery-unregistered-count", "0")
    text = f"{signature.uuid}-r{signature.retry_count}.{signature.retry_timeout}-q{requeues}-h{hop}"
    return _clean_dedup(text)


def _batches_within(entries: list[dict[str, Any]], max_bytes: int) -> Iterator[list[dict[str, Any]]]:
    """Batches of at most 10 entries whose bodies together stay within SQS's batch size limit."""
    batch: list[dict[str, Any]] = []
    size = 0
    for entry in entries:
        entry_size = _size(entry["MessageBody"], entry.get("MessageAttributes", {}))
        if batch and (len(batch) == BATCH or size + entry_size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += entry_size
    if batch:
        yield batch


def _too_large(exc: BrokerError, queue: _Queue) -> MessageTooLargeError | None:
    cause = exc.__cause__
    text = str(cause or exc)
    if "shorter than" in text or "too long" in text.lower() or error_code(cause or exc) == "MessageTooLong":
        return MessageTooLargeError(f"message over the size limit of SQS queue {queue.name!r}: {exc}")
    return None
