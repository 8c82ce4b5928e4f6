"""``amqp://`` / ``amqps://``: the RabbitMQ broker, with Go Machinery's topology and wire format.

Threading (pika is not thread-safe: a connection and its channels belong to one thread)
-----------------------------------------------------------------------------------------
- **Consuming**: one I/O thread per broker owns one ``BlockingConnection`` with one channel per
  consumed queue. RabbitMQ pushes deliveries into that thread (``basic_consume``), which puts them
  into a ``queue.Queue`` per queue; :meth:`AMQPBroker.consume` (the worker's consumer thread) takes at
  most ``max_messages`` from it. ``ack``/``nack`` come from task threads: they are queued as commands
  and run by the I/O thread, woken with ``connection.add_callback_threadsafe`` (the one thread-safe
  method of ``BlockingConnection``). The I/O thread also answers heartbeats, since it calls
  ``process_data_events`` all the time, so a long task never starves the connection. We chose one
  I/O thread over "a connection per thread" for the consumer because delivery tags belong to the
  channel that received the message: acks must go to that same channel, so the channel must outlive
  any single task thread.
- **Producing**: a producer's publish (this broker never consumed, the caller is not a task) goes to
  the :class:`~.outbox.Outbox`: its own I/O thread publishes and keeps each message until RabbitMQ
  confirms it; ``flush()``/``close()``/interpreter exit wait for the confirms. Every other publish (a
  worker's, a task's, the first to a routing key, or all with ``amqp.wait_for_confirms``) uses a small
  pool of separate connections (:class:`~.connection.LinkPool`), each link held by one thread for one
  publish, and waits for its confirm (``mandatory=True``). A publish never waits behind the consumer.

Prefetch
--------
``basic.qos`` is per consumer and set to ``min(prefetch_count, unsettled + max_messages)``: the
deliveries this process holds (handed to the worker and not yet acked, plus buffered ones) never exceed
the worker's concurrency, because the worker asks for exactly its free slots. ``prefetch_count = 0``
means "follow the worker" (Go: unlimited). The value only grows (RabbitMQ cannot change the prefetch of a
live consumer, so a larger value re-creates the consumer); a consumer left without :meth:`consume` calls
for :data:`IDLE_RELEASE` seconds while holding buffered messages is cancelled and those messages go back
to the queue, so a stopped worker does not keep messages hostage.

Delays and server shutdowns
---------------------------
A delayed message (an ETA, a retry's countdown) waits in a delay queue until its TTL runs out and
RabbitMQ dead-letters it into the task queue. A classic queue dead-letters **at most once**: a message
whose TTL runs out while the server stops its queues can be dropped, whoever published it (the retry
``make chaos`` lost now and then; an earlier fix, in which each process re-sent what it had delayed
after a shutdown, could not cover a process that had died). So the delay queues are **quorum** queues
with ``x-dead-letter-strategy: at-least-once`` (RabbitMQ 3.10+): the queue keeps each dead letter until
the task queue confirmed it and sends it again otherwise, also after a restart, with no help from the
publishing process. A duplicate is possible (at-least-once delivery). Three details make it hold, each
found by a lost message:

- After a restart the quorum queues come back before the classic task queues (30 s with 2,000 queues
  here), so their dead letters wait; a delay queue that expired meanwhile took them with it (3 of 8
  in the restart fault test with Go's ``x-expires`` of delay + 5 s). So a quorum delay queue lives
  :data:`QUORUM_DELAY_GRACE_MS` (10 min) past its last message's due time.
- RabbitMQ 3.10 counts a quorum queue's ``x-expires`` from its creation (or last consumer), not from
  the last declare or publish, and on through a restart: ``make chaos`` lost 11 retries when
  ``delay.1000`` and ``delay.2000`` expired, full, 10 min after they were created. So a quorum delay
  queue takes messages only during one :data:`QUORUM_DELAY_WINDOW` (10 min, named in the queue) and
  expires after window + delay + grace.
- To keep the number of these queues small, a delay is rounded up to 64 steps per doubling (at most
  1/64 later; exact below 128 ms).

Costs (README.md of the plugin, "Delays"): a new quorum delay queue takes ~14 ms to declare (classic
~4 ms), a publish into one is no slower, a quorum TTL may fire a few hundred ms late under load. A
RabbitMQ outage longer than the grace can still lose what waits in a delay queue. ``auto_delete`` (a
classic-only property) and ``delayed_queue`` keep Go's classic layout and its at-most-once
dead-lettering.

Reconnect
---------
The I/O thread reconnects with exponential back-off (reset once a connection lived a few seconds) and
re-creates its consumers. Messages unacked when a connection dropped are redelivered by RabbitMQ; acks
for them (delivery tags of a dead channel) are dropped, never sent to a new channel. Publishes retry on
a new connection for up to ``reconnect_timeout`` seconds (60) once a connection worked, ``retry_timeout``
(15) while none has. A refused login or vhost fails at once.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import queue as queue_mod
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any

import pika.exceptions as pex
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.connection import Parameters
from pika.spec import Basic, BasicProperties

from machinery import codec
from machinery.backend import Backend
from machinery.backoff import Backoff
from machinery.broker import BaseBroker, DeadLetter, Delivery, decode_body
from machinery.capabilities import Capability
from machinery.config import Config
from machinery.delivery import BaseDelivery
from machinery.signature import Signature, TaskState, now_utc
from machinery.task import current_signature

from .connection import (
    MAX_SHORT_STRING,
    AMQPAccessError,
    AMQPError,
    AMQPUnavailableError,
    Endpoint,
    Link,
    Publish,
    UnroutableError,
    connect,
    connection_parameters,
)
from .outbox import Outbox
from .settings import AMQPSettings

__all__ = ["AMQPBroker", "AMQPDelivery"]

logger = logging.getLogger("machinery.amqp")

#: Seconds without a consume() call after which buffered (unhanded) deliveries go back to RabbitMQ.
IDLE_RELEASE = 10.0
#: Longest TTL of one delay hop; a longer ETA arrives early and the worker sends it round again.
MAX_DELAY_MS = 2**30
#: Seconds during which one quorum delay queue takes new messages: RabbitMQ 3.10 expires a quorum queue
#: (x-expires) counting from its creation, publishes or not, so each window gets its own queue.
QUORUM_DELAY_WINDOW = 600
#: Milliseconds a quorum delay queue outlives its last message's due time: its dead letters must reach
#: the task queue first, also when RabbitMQ restarted (the expiry clock runs on while it is down) and
#: its classic queues recover slowly (30 s with 2,000 queues), or a dead letter waits out the re-send
#: timeout (see the module docs).
QUORUM_DELAY_GRACE_MS = 10 * 60 * 1000
#: Arguments of an automatic delay queue: dead letters kept until the task queue confirmed them.
#: at-least-once needs reject-publish (no overflow may drop a message either).
QUORUM_DELAY_ARGS = {
    "x-queue-type": "quorum",
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
}
#: The dead-letter queue of ``<queue>`` when the queue has no server-side dead-letter exchange.
DEAD_SUFFIX = ".dead"
#: headers of a dead-letter copy in ``<queue>.dead``: why, when (ISO 8601, UTC), delivery count
DEAD_REASON, DEAD_TIME, DEAD_COUNT = (
    "x-machinery-dead-reason",
    "x-machinery-dead-time",
    "x-machinery-deliveries",
)
_UNLIMITED = 1 << 30
#: headers RabbitMQ sets on a delivered message (delivery count, dead-letter history)
_SERVER_HEADERS = ("x-delivery-count", "x-death", "x-first-death-", "x-last-death-")


def _header_value(value: Any) -> Any:
    """AMQP tables take str, bytes, bool, int, Decimal, datetime, dict, list and None; pika has no float."""
    if value is None or isinstance(value, str | bytes | bool | int | Decimal | datetime):
        return value
    if isinstance(value, dict):
        return {str(k): _header_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_header_value(v) for v in value]
    return str(value)


def _properties(headers: dict[str, Any] | None, priority: int, message_id: str = "") -> BasicProperties:
    # message_id is an AMQP short string: a longer uuid (the body still carries it) is left out rather
    # than make the publish fail
    if len(message_id.encode("utf-8", "surrogatepass")) > MAX_SHORT_STRING:
        message_id = ""
    return BasicProperties(
        content_type="application/json",
        delivery_mode=2,
        headers=_header_value(headers or {}),
        priority=priority,
        message_id=message_id or None,
    )


@dataclass
class _Outgoing:
    """One message to publish: the task queue it is for, its AMQP routing key, body and properties."""

    queue: str
    key: str
    body: bytes
    properties: BasicProperties
    delay_ms: int = 0
    #: its PENDING state, stored by the outbox's I/O thread before its first publish (a producer's send)
    pending: tuple[Backend, TaskState] | None = None


class AMQPDelivery(BaseDelivery):
    """One message delivered by RabbitMQ and handed to the worker."""

    __slots__ = ("_broker", "_properties", "_serial", "_tag")

    def __init__(
        self,
        broker: AMQPBroker,
        queue: str,
        serial: int,
        tag: int,
        redelivered: bool,
        body: bytes,
        properties: BasicProperties,
    ) -> None:
        # classic queues count no deliveries; quorum queues send x-delivery-count (0 on the first)
        count = (properties.headers or {}).get("x-delivery-count")
        super().__init__(
            body,
            queue=queue,
            redelivered=redelivered,
            delivery_count=count + 1 if isinstance(count, int) else None,
        )
        self._broker = broker
        self._serial = serial
        self._tag = tag
        self._properties = properties

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f" #{self._tag}>"

    def _ack(self) -> None:
        self._broker._settle(self._serial, self._tag, ack=True)

    def _nack(self, requeue: bool, delay: float | None, reason: str) -> None:
        """Requeue (later: through a delay queue), or dead-letter: to the queue's own dead-letter
        exchange when it has one (RabbitMQ then records why in ``x-death``), else as a copy in
        ``<queue>.dead`` carrying ``reason``."""
        broker = self._broker
        if requeue and delay is not None and delay > 0:
            # RabbitMQ cannot requeue "later": send a copy through a delay queue, then ack this one.
            try:
                broker._republish(self.queue, self.body, self._properties, math.ceil(delay * 1000))
            except Exception as exc:
                logger.warning("could not requeue %r with a delay (%s); requeued now instead", self, exc)
                broker._settle(self._serial, self._tag, ack=False, requeue=True)
            else:
                broker._settle(self._serial, self._tag, ack=True)
        elif requeue:
            broker._settle(self._serial, self._tag, ack=False, requeue=True)
        elif broker._server_dead_letters:
            broker._settle(self._serial, self._tag, ack=False, requeue=False)
        else:
            try:
                broker._dead_letter(self.queue, self.body, self._properties, reason, self.delivery_count)
            except Exception as exc:
                logger.error("could not dead-letter %r (%s); requeued instead", self, exc)
                broker._settle(self._serial, self._tag, ack=False, requeue=True)
            else:
                broker._settle(self._serial, self._tag, ack=True)

    def _extend(self, seconds: float) -> None:
        """Nothing to do: RabbitMQ keeps an unacked message leased as long as the channel lives."""
        return None


class AMQPBroker(Endpoint, BaseBroker):
    """RabbitMQ broker (see the module docs for threading, prefetch and reconnects).

    ``url`` may be a failover list joined by ``config.multiple_broker_separator``. Nothing connects
    until the first publish or consume.
    """

    def __init__(
        self,
        url: str,
        config: Config | None = None,
        *,
        retry_timeout: float = 15.0,
        reconnect_timeout: float = 60.0,
    ) -> None:
        super().__init__(config)
        self._endpoint(url, retry_timeout, reconnect_timeout)
        amqp = AMQPSettings.of(self.config)
        self.exchange = amqp.exchange
        self.exchange_type = amqp.exchange_type or "direct"
        self.binding_key = amqp.binding_key
        self.queue_args: dict[str, Any] = dict(amqp.queue_declare_args or {})
        self.binding_args: dict[str, Any] = dict(amqp.queue_binding_args or {})
        caps = {
            Capability.DELAY,
            Capability.PENDING_LIST,
            Capability.DEAD_LETTER,
            Capability.FIFO,
            Capability.REDELIVERY,
            Capability.MULTI_PROCESS,
        }
        if "x-max-priority" in self.queue_args:
            caps.add(Capability.PRIORITY)
        self.capabilities = frozenset(caps)
        #: nack(requeue=False) lets RabbitMQ dead-letter when the task queues have their own DLX
        self._server_dead_letters = "x-dead-letter-exchange" in self.queue_args
        self._producers = self._link_pool("producer")
        self._wait_for_confirms = amqp.wait_for_confirms
        #: AMQP routing keys a confirmed publish of this process reached (see _deferred)
        self._routed: set[str] = set()
        self._outbox: Outbox[_Outgoing] | None = None
        self._outbox_lock = threading.Lock()
        self._consumed = False
        self._consumer: _Consumer | None = None
        self._consumer_lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_url(cls, url: str, config: Config) -> AMQPBroker:
        """Build from a URL (or failover list) without any I/O."""
        return cls(url, config)

    # topology ----------------------------------------------------------------------------------
    @property
    def _direct(self) -> bool:
        return self.exchange_type == "direct"

    def route(self, routing_key: str) -> tuple[str, str]:
        """``(queue, AMQP routing key)`` for a signature's routing key (a queue name here).

        Direct exchange (Go's default): the default queue is bound with ``binding_key`` and messages
        for it are published with that key, as Go producers do (so a Go worker consumes them); its
        ``binding_key`` spelling (``machinery_task``) also names the default queue. Any other queue is
        declared under its own name and bound with that name, as Go's producer does for a custom
        routing key. No queue named after the binding key is created (Go's #484). Other exchange
        types: the key is the queue name and every queue is bound with ``binding_key`` and the
        binding arguments (e.g. a headers exchange).
        """
        default = self.config.default_queue
        name = routing_key or default
        if self._direct and name in (default, self.binding_key):
            return default, self.binding_key
        return name, name

    def _binding_key_for(self, queue: str) -> str:
        if self._direct:
            return self.binding_key if queue == self.config.default_queue else queue
        return self.binding_key

    def _queue_arguments(self) -> dict[str, Any] | None:
        return dict(self.queue_args) or None

    def declare_queue(self, channel: BlockingChannel, declared: set[str], queue: str) -> None:
        """Declare (once per connection) the exchange, the durable task queue and its binding."""
        if "x:" + self.exchange not in declared and self.exchange:
            channel.exchange_declare(self.exchange, exchange_type=self.exchange_type, durable=True)
            declared.add("x:" + self.exchange)
        if "q:" + queue in declared:
            return
        channel.queue_declare(queue, durable=True, arguments=self._queue_arguments())
        if self.exchange:
            channel.queue_bind(
                queue,
                self.exchange,
                routing_key=self._binding_key_for(queue),
                arguments=dict(self.binding_args) or None,
            )
        declared.add("q:" + queue)

    def _delay_target(self, link: Link, key: str, delay_ms: int) -> tuple[str, int, str]:
        """Declare the delay queue for ``delay_ms`` and return ``(queue name, delay, expiration)``.

        Automatic mode: a durable queue whose ``x-message-ttl`` is the delay and which dead-letters
        into the exchange with the task's routing key (see :meth:`_automatic_delay_queue`). If a queue
        of that name exists with other arguments (another producer's), the delay is moved one
        millisecond later (never earlier) and a fresh name tried.

        Fixed mode (``amqp.delayed_queue`` set, Go's layout): one classic queue, per-message
        ``expiration``; RabbitMQ only expires the head of a queue, so a long delay holds back shorter
        ones behind it.
        """
        amqp = AMQPSettings.of(self.config)
        if amqp.delayed_queue:
            default_key = self._direct and key == self.binding_key
            name = amqp.delayed_queue if default_key else f"{amqp.delayed_queue}.{key}"
            if "d:" + name not in link.declared:
                args = {"x-dead-letter-exchange": self.exchange, "x-dead-letter-routing-key": key}
                link.channel.queue_declare(name, durable=True, arguments={**args, **self._priority_arg()})
                link.declared.add("d:" + name)
            return name, delay_ms, str(delay_ms)
        refusal = ""
        for _ in range(5):
            name, delay_ms, args = self._automatic_delay_queue(key, delay_ms)
            try:
                link.channel.queue_declare(name, durable=True, auto_delete=amqp.auto_delete, arguments=args)
            except pex.ChannelClosedByBroker as exc:
                if exc.reply_code != 406:
                    raise
                refusal = exc.reply_text
                link.reset_channel()
                delay_ms += 1
                continue
            return name, delay_ms, ""
        raise AMQPError(
            f"could not declare a delay queue for routing key {key!r}: RabbitMQ said {refusal!r} (argument "
            "conflicts; quorum delay queues need RabbitMQ 3.10 or later, amqp.auto_delete=true keeps "
            "Go's classic ones)"
        )

    def _automatic_delay_queue(self, key: str, delay_ms: int) -> tuple[str, int, dict[str, Any]]:
        """Name, delay and arguments of the delay queue for ``delay_ms``.

        By default a quorum queue ``delay.<ms>.<exchange>.<key>.quorum.<window>`` that dead-letters at
        least once (see "Delays and server shutdowns" in the module docs). RabbitMQ 3.10 expires a
        quorum queue counting from its creation (publishes do not count as use), so a queue takes
        messages only during one :data:`QUORUM_DELAY_WINDOW` (``<window>`` is the Unix time divided by
        it) and expires :data:`QUORUM_DELAY_GRACE_MS` after its last message is due. To keep the
        number of such queues small, the delay is rounded up to 64 steps per doubling (at most 1/64
        later, never earlier). The message keeps its priority property, so priority survives the
        delay (Go's #824) without a priority on the delay queue (a quorum queue has none).

        With ``amqp.auto_delete`` (a classic-only property): Go's classic ``delay.<ms>.<exchange>.<key>``
        with the exact delay and the task queues' ``x-max-priority``, expiring
        ``max(2 * delay, delay + 5 s)`` after its last declare (Go: 2 * delay, which a very short delay
        could outrun).
        """
        args: dict[str, Any] = {"x-dead-letter-exchange": self.exchange, "x-dead-letter-routing-key": key}
        if AMQPSettings.of(self.config).auto_delete:
            expires = max(2 * delay_ms, delay_ms + 5000)
            args |= {"x-message-ttl": delay_ms, "x-expires": expires, **self._priority_arg()}
            return f"delay.{delay_ms}.{self.exchange}.{key}", delay_ms, args
        delay_ms = _round_up(delay_ms)
        window = int(time.time() // QUORUM_DELAY_WINDOW)
        expires = QUORUM_DELAY_WINDOW * 1000 + delay_ms + QUORUM_DELAY_GRACE_MS
        args |= {"x-message-ttl": delay_ms, "x-expires": expires, **QUORUM_DELAY_ARGS}
        return f"delay.{delay_ms}.{self.exchange}.{key}.quorum.{window}", delay_ms, args

    def _priority_arg(self) -> dict[str, Any]:
        if "x-max-priority" in self.queue_args:
            return {"x-max-priority": self.queue_args["x-max-priority"]}
        return {}

    # producing ---------------------------------------------------------------------------------
    def _outgoing(self, sig: Signature) -> _Outgoing:
        body = codec.encode_signature(sig)
        queue, key = self.route(sig.routing_key)
        delay_ms = 0
        if sig.eta is not None:
            delay_ms = max(0, math.ceil((sig.eta - now_utc()).total_seconds() * 1000))
        return _Outgoing(queue, key, body, _properties(sig.headers, sig.priority, sig.uuid), delay_ms)

    def publish(self, signature: Signature) -> None:
        """Publish with a publisher confirm (a producer's: confirmed later, see :meth:`flush`); an
        unroutable message raises :class:`UnroutableError` (a producer's: from :meth:`flush`, except the
        first to its routing key)."""
        self._send([self._outgoing(signature)])

    def publish_many(self, signatures: Sequence[Signature]) -> None:
        """Publish several messages on one connection, each confirmed (as :meth:`publish`)."""
        if signatures:
            self._send([self._outgoing(s) for s in signatures])

    def publish_raw(self, queue: str, body: bytes, *, priority: int = 0, delay: float = 0.0) -> None:
        """Put ``body`` on ``queue`` as is (tests use it for malformed messages)."""
        q, key = self.route(queue)
        self._send([_Outgoing(q, key, body, _properties({}, priority), math.ceil(delay * 1000))])

    def _republish(self, queue: str, body: bytes, properties: BasicProperties, delay_ms: int) -> None:
        q, key = self.route(queue)
        # what RabbitMQ wrote about the old message (a quorum queue's delivery count, the delay hop's
        # x-death) is not the copy's: a copy carrying x-delivery-count would count deliveries it never had
        headers = {k: v for k, v in (properties.headers or {}).items() if not k.startswith(_SERVER_HEADERS)}
        props = _properties(headers, properties.priority or 0, properties.message_id or "")
        self._send([_Outgoing(q, key, body, props, delay_ms)])

    def _dead_letter(
        self, queue: str, body: bytes, properties: BasicProperties, reason: str = "", delivery_count: int = 1
    ) -> None:
        """Copy the message to ``<queue>.dead`` (durable, never consumed by Machinery), with the reason,
        time and delivery count in its headers."""
        name = queue + DEAD_SUFFIX
        headers = dict(properties.headers or {})
        headers[DEAD_REASON] = reason
        headers[DEAD_TIME] = datetime.now(UTC).isoformat()
        headers[DEAD_COUNT] = delivery_count

        def fn(link: Link) -> None:
            if "q:" + name not in link.declared:
                link.channel.queue_declare(name, durable=True)
                link.declared.add("q:" + name)
            props = _properties(headers, properties.priority or 0, properties.message_id or "")
            link.channel.basic_publish("", name, body, props, mandatory=True)

        self._check_open()
        self._producers.run(fn)

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` messages waiting in ``<queue>.dead`` (oldest first), left in place. RabbitMQ
        cannot list queues over AMQP, so ``queue`` is required."""
        if queue is None:
            raise ValueError("AMQPBroker.dead_letters needs a queue name (AMQP cannot list queues)")
        return [
            _dead_letter_of(queue, body, props) for body, props in self._peek_messages(queue + DEAD_SUFFIX)
        ][: max(0, limit)]

    def _send(self, messages: list[_Outgoing]) -> None:
        self._check_open()
        if self._deferred(messages):
            self._get_outbox().submit(messages)
        else:
            if len(messages) > 1:
                self._producers.run(self._batch_sender(messages))
            else:
                self._producers.run(lambda link: self._publish_one(link, messages[0]))
            self._routed.update(m.key for m in messages if m.delay_ms <= 0)

    def _deferred(self, messages: list[_Outgoing]) -> bool:
        """Whether ``messages`` go through the outbox (confirmed later) instead of waiting for their
        confirms here. Not in a worker: this broker consumed (so the worker's retries, callbacks and hops
        are confirmed before it acks their source), or the caller is a task (its sends are confirmed
        before the task's message is acked, also in a child of ``pool="process"``). Not for the first
        message to a routing key either, so a wrong exchange or binding raises ``UnroutableError`` to
        the caller. Not with ``amqp.wait_for_confirms``."""
        if self._wait_for_confirms or self._consumed or current_signature() is not None:
            return False
        return all(m.delay_ms > 0 or m.key in self._routed for m in messages)

    def _get_outbox(self) -> Outbox[_Outgoing]:
        with self._outbox_lock:
            outbox = self._outbox
            if outbox is None or outbox.pid != os.getpid():  # forked: the parent's thread is not ours
                outbox = self._outbox = Outbox(self._producers, self._target, prepare=_store_pending)
            return outbox

    def publish_with_states(
        self, signatures: Sequence[Signature], states: Sequence[TaskState], backend: Backend
    ) -> bool:
        """A producer's send (``machinery_publish_with_states``): hand the messages with their PENDING
        states to the outbox, whose I/O thread stores the states (one ``set_states`` per batch), then
        publishes. False (the core stores and publishes itself) where :meth:`_deferred` says no."""
        messages = [self._outgoing(s) for s in signatures]
        if not self._deferred(messages):
            return False
        self._check_open()
        for message, state in zip(messages, states, strict=True):
            message.pending = (backend, state)
        self._get_outbox().submit(messages)
        return True

    def flush(self, timeout: float | None = None) -> None:
        """Wait until RabbitMQ confirmed every message this broker published (a producer's publish
        returns before its confirm; see README "Publisher confirms"). Raises :class:`AMQPError`
        (``UnroutableError`` for an unroutable one) for messages that could not be delivered since the
        last flush, ``AMQPUnavailableError`` when ``timeout`` seconds were not enough."""
        outbox = self._outbox
        if outbox is not None and outbox.pid == os.getpid():
            outbox.flush(timeout)

    def _batch_sender(self, messages: list[_Outgoing]) -> Callable[[Link], None]:
        """Publish ``messages`` and wait for their confirms once per batch. On a new connection (the pool
        retries after a broken one) only the messages not confirmed yet are sent again."""
        confirmed: set[int] = set()

        def fn(link: Link) -> None:
            todo = [i for i in range(len(messages)) if i not in confirmed]
            answer = link.publish_confirmed([self._target(link, messages[i]) for i in todo])
            confirmed.update(todo[j] for j in answer.acked)
            if answer.nacked:
                queues = sorted({messages[todo[j]].queue for j in answer.nacked})
                raise AMQPError(f"RabbitMQ refused (nacked) {len(answer.nacked)} message(s) for {queues}")
            if answer.returned:
                link.declared.clear()  # a queue declared earlier may have been deleted: declare again
                for j in sorted(answer.returned):
                    self._publish_one(link, messages[todo[j]])  # raises UnroutableError if still unroutable
                    confirmed.add(todo[j])

        return fn

    def _target(self, link: Link, msg: _Outgoing) -> Publish:
        """Where ``msg`` goes (its queue declared on ``link``; a delayed one to its delay queue)."""
        self.declare_queue(link.channel, link.declared, msg.queue)
        if msg.delay_ms <= 0:
            return Publish(self.exchange, msg.key, msg.body, msg.properties)
        hop = min(msg.delay_ms, MAX_DELAY_MS)
        name, hop, expiration = self._delay_target(link, msg.key, hop)
        # the default exchange routes straight to the delay queue
        return Publish(
            "", name, msg.body, _with_expiration(msg.properties, expiration) if expiration else msg.properties
        )

    def _publish_one(self, link: Link, msg: _Outgoing) -> None:
        for attempt in (1, 2):
            exchange, key, _, props = self._target(link, msg)
            try:
                link.channel.basic_publish(exchange, key, msg.body, props, mandatory=True)
                return
            except pex.UnroutableError:
                # A queue we declared earlier on this connection may have been deleted: declare again.
                link.declared.clear()
                if attempt == 2:
                    raise UnroutableError(
                        f"RabbitMQ returned a message for queue {msg.queue!r} as unroutable: exchange "
                        f"{self.exchange!r} has no queue bound with routing key {msg.key!r} "
                        f"(check amqp.exchange, amqp.exchange_type and amqp.binding_key)"
                    ) from None
            except pex.NackError:
                raise AMQPError(f"RabbitMQ refused (nacked) a message for queue {msg.queue!r}") from None

    # consuming ---------------------------------------------------------------------------------
    def consume(self, queue: str, max_messages: int, timeout: float) -> list[Delivery]:
        if max_messages <= 0:
            return []
        self._check_open()
        if not self._consumed:
            self._consumed = True  # from now on every publish waits for its confirm (see _deferred)
            self.flush(self._producers.reconnect_timeout)
        return self._get_consumer().take(queue, max_messages, timeout)

    def _get_consumer(self) -> _Consumer:
        with self._consumer_lock:
            if self._consumer is None or not self._consumer.is_alive() or self._consumer.pid != os.getpid():
                self._consumer = _Consumer(self)
                self._consumer.start()
            return self._consumer

    def _settle(self, serial: int, tag: int, *, ack: bool, requeue: bool = True) -> None:
        consumer = self._consumer
        if consumer is not None:
            consumer.settle(serial, tag, ack=ack, requeue=requeue)

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack several deliveries with one hand-over to the I/O thread (the worker's state writer uses
        it for a flushed batch) instead of one wait per message."""
        mine: list[tuple[int, int]] = []
        for delivery in deliveries:
            if isinstance(delivery, AMQPDelivery) and delivery._broker is self:
                if delivery.claim():
                    mine.append((delivery._serial, delivery._tag))
            else:
                delivery.ack()
        consumer = self._consumer
        if mine and consumer is not None:
            consumer.settle_many(mine, ack=True)

    # inspecting --------------------------------------------------------------------------------
    def _peek(self, queue: str) -> list[bytes]:
        """Bodies of every ready message of ``queue``, in order, left in the queue."""
        return [body for body, _ in self._peek_messages(queue)]

    def _peek_messages(self, queue: str) -> list[tuple[bytes, BasicProperties]]:
        """Every ready message of ``queue`` (body, properties), in order, left in the queue.

        Gets them one by one without ack on a private channel, then requeues them all at once
        (RabbitMQ puts them back at their original places, marked redelivered). Meanwhile no other
        consumer can take them. A missing queue has no messages.
        """

        self.flush(self._producers.reconnect_timeout)

        def fn(link: Link) -> list[tuple[bytes, BasicProperties]]:
            channel = link.connection.channel()
            bodies: list[tuple[bytes, BasicProperties]] = []
            try:
                while True:
                    method, props, body = channel.basic_get(queue, auto_ack=False)
                    if method is None or body is None:
                        break
                    bodies.append((body, props or BasicProperties()))
                    if method.message_count == 0:
                        break
                if bodies:
                    channel.basic_nack(delivery_tag=0, multiple=True, requeue=True)
            except pex.ChannelClosedByBroker as exc:
                if exc.reply_code == 404:
                    return []
                raise
            finally:
                if channel.is_open:
                    channel.close()
            return bodies

        self._check_open()
        return self._producers.run(fn)

    def pending(self, queue: str) -> list[Signature]:
        """Signatures waiting in ``queue`` in delivery order (malformed bodies are skipped)."""
        result = []
        for body in self._peek(queue):
            sig, error = decode_body(body)
            if sig is None:
                logger.warning("pending(%s): skipped a malformed message: %s", queue, error)
            else:
                result.append(sig)
        return result

    def purge(self, queue: str) -> None:
        """Delete every ready message of ``queue`` (delay queues are not touched)."""
        self.flush(self._producers.reconnect_timeout)

        def fn(link: Link) -> None:
            try:
                link.channel.queue_purge(queue)
            except pex.ChannelClosedByBroker as exc:
                if exc.reply_code != 404:
                    raise
                link.reset_channel()

        self._check_open()
        self._producers.run(fn)

    def delete_queues(self, *queues: str) -> None:
        """Delete queues (tests clean up with it); missing ones are ignored."""
        self.flush(self._producers.reconnect_timeout)

        def fn(link: Link) -> None:
            for name in queues:
                try:
                    link.channel.queue_delete(name)
                except pex.ChannelClosedByBroker as exc:
                    if exc.reply_code != 404:
                        raise
                    link.reset_channel()
            link.declared.clear()

        self._producers.run(fn)

    # life cycle --------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise AMQPError("the AMQP broker is closed")

    def close(self) -> None:
        """Wait for the confirms of what was published (up to ``reconnect_timeout`` seconds; raises
        :class:`AMQPError` for messages that could not be delivered), stop consuming (unacked messages
        go back to their queues) and close every connection."""
        if self._closed:
            return
        self._closed = True
        outbox, self._outbox = self._outbox, None
        try:
            if outbox is not None:
                outbox.close(self._producers.reconnect_timeout)
        finally:
            consumer, self._consumer = self._consumer, None
            if consumer is not None:
                consumer.stop()
            self._producers.close()


def _store_pending(messages: list[_Outgoing]) -> None:
    """Store the PENDING states of ``messages`` (one write per backend), before their first publish."""
    by_backend: dict[int, tuple[Backend, list[TaskState]]] = {}
    for message in messages:
        if message.pending is not None:
            backend, state = message.pending
            by_backend.setdefault(id(backend), (backend, []))[1].append(state)
    for backend, states in by_backend.values():
        if len(states) == 1:
            backend.set_state(states[0])
        else:
            backend.set_states(states)
    for message in messages:
        message.pending = None


def _dead_letter_of(queue: str, body: bytes, props: BasicProperties) -> DeadLetter:
    """A message of ``<queue>.dead``: our own copy's headers, else RabbitMQ's ``x-death`` record (a
    queue with its own dead-letter exchange), else what is known."""
    headers: dict[str, Any] = dict(props.headers or {})
    reason, when, count = str(headers.get(DEAD_REASON, "")), None, int(headers.get(DEAD_COUNT, 1) or 1)
    try:
        when = datetime.fromisoformat(str(headers[DEAD_TIME])) if DEAD_TIME in headers else None
    except ValueError:
        when = None
    deaths = headers.get("x-death")
    if DEAD_REASON not in headers and isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        death = deaths[0]
        reason = str(death.get("reason", "") or "")
        if isinstance(death.get("time"), datetime):
            when = death["time"] if death["time"].tzinfo else death["time"].replace(tzinfo=UTC)
        count = int(death.get("count", 1) or 1)
    return DeadLetter(body, reason, when or datetime.fromtimestamp(0, UTC), count, queue)


def _round_up(delay_ms: int) -> int:
    """``delay_ms`` rounded up to one of 64 steps per doubling (exact below 128 ms)."""
    step = 1 << max(0, delay_ms.bit_length() - 7)
    return -(-delay_ms // step) * step


def _with_expiration(props: BasicProperties, expiration: str) -> BasicProperties:
    return BasicProperties(
        content_type=props.content_type,
        delivery_mode=props.delivery_mode,
        headers=props.headers,
        priority=props.priority,
        message_id=props.message_id,
        expiration=expiration,
    )


# ------------------------------------------------------------------------------------------------
# The consumer's I/O thread


@dataclass
class _Item:
    serial: int
    tag: int
    redelivered: bool
    body: bytes
    properties: BasicProperties


@dataclass
class _QueueState:
    """One consumed queue. Fields below ``# I/O thread`` are touched only by the I/O thread."""

    name: str
    buffer: queue_mod.Queue[_Item | None] = field(default_factory=queue_mod.Queue)
    target: int = 0  # wanted prefetch (only grows)
    active: bool = True  # asked for recently
    last_asked: float = 0.0
    error: AMQPError | None = None
    # I/O thread
    channel: BlockingChannel | None = None
    serial: int = 0
    ctag: str | None = None
    consumer_target: int = 0
    declared: set[str] = field(default_factory=set)


class _Consumer(threading.Thread):
    """Owns the consuming connection (see the module docs)."""

    def __init__(self, broker: AMQPBroker) -> None:
        super().__init__(name="machinery-amqp-consumer", daemon=True)
        self.broker = broker
        self.pid = os.getpid()
        self.params: list[Parameters] | None = None
        self.lock = threading.Lock()
        self.queues: dict[str, _QueueState] = {}
        self.commands: deque[Callable[[], None]] = deque()
        self.connection: BlockingConnection | None = None
        self.connected = threading.Event()
        self.attempted = threading.Event()
        self.stopping = threading.Event()
        self.error: AMQPError | None = None
        self.serials = itertools.count(1)
        self.live: dict[int, BlockingChannel] = {}  # serial -> open channel
        self.handed: dict[tuple[int, int], str] = {}  # (serial, tag) -> queue, handed to the worker
        self.ctags = itertools.count(1)

    # called from other threads -----------------------------------------------------------------
    def take(self, name: str, max_messages: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        prefetch = AMQPSettings.of(self.broker.config).prefetch_count or _UNLIMITED
        with self.lock:
            state = self.queues.get(name)
            if state is None:
                state = self.queues[name] = _QueueState(name)
            state.last_asked = time.monotonic()
            wake = not state.active or state.ctag is None
            state.active = True
            want = max(1, min(prefetch, len(self.handed) + max_messages))
            if want > state.target:
                state.target = want
                wake = True
        error = self._pop_error(state)
        if error is not None:
            raise error
        if wake:
            self.wake()
        if not self.connected.is_set():
            if not self.attempted.wait(max(0.0, deadline - time.monotonic())):
                return []  # still connecting for the first time: nothing to report yet
            if isinstance(self.error, AMQPAccessError):
                raise self.error
            if not self.connected.wait(max(0.0, deadline - time.monotonic())):
                raise self.error or AMQPUnavailableError("not connected to RabbitMQ")
        items: list[_Item] = []
        while len(items) < max_messages:
            try:
                if items:
                    item = state.buffer.get_nowait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    item = state.buffer.get(timeout=remaining)
            except queue_mod.Empty:
                break
            if item is None:  # the I/O thread woke us: the queue cannot be consumed
                error = self._pop_error(state)
                if error is not None and not items:
                    raise error
                if error is not None:
                    with self.lock:
                        state.error = error  # reported by the next call
                    break
                continue
            with self.lock:
                if item.serial not in self.live:
                    continue  # its channel died: RabbitMQ redelivers it
                self.handed[(item.serial, item.tag)] = name
            items.append(item)
        return [
            AMQPDelivery(self.broker, name, i.serial, i.tag, i.redelivered, i.body, i.properties)
            for i in items
        ]

    def _pop_error(self, state: _QueueState) -> AMQPError | None:
        with self.lock:
            error, state.error = state.error, None
            return error

    def settle(self, serial: int, tag: int, *, ack: bool, requeue: bool = True) -> None:
        self.settle_many([(serial, tag)], ack=ack, requeue=requeue)

    def settle_many(self, deliveries: Sequence[tuple[int, int]], *, ack: bool, requeue: bool = True) -> None:
        """Ack or nack (channel serial, delivery tag) pairs: one hand-over to the I/O thread for all."""
        with self.lock:
            todo = []
            for serial, tag in deliveries:
                self.handed.pop((serial, tag), None)
                if serial in self.live:
                    todo.append((serial, tag))
                else:
                    logger.debug(
                        "ack of delivery %d dropped: its channel is gone (RabbitMQ redelivers it)", tag
                    )
        if not todo:
            return
        done = threading.Event()
        self.commands.append(partial(self._run_settle, todo, ack, requeue, done))
        if threading.current_thread() is self:
            self._run_commands()
            return
        self.wake()
        done.wait(5.0)

    def wake(self) -> None:
        connection = self.connection
        if connection is not None:
            with contextlib.suppress(Exception):  # closed: the loop notices on its own
                connection.add_callback_threadsafe(self._run_commands)

    def stop(self) -> None:
        self.stopping.set()
        self.wake()
        if threading.current_thread() is not self:
            self.join(10.0)

    # the I/O thread ----------------------------------------------------------------------------
    def run(self) -> None:
        backoff = Backoff(0.2, 5.0)
        broker = self.broker
        while not self.stopping.is_set():
            try:
                if self.params is None:
                    self.params = connection_parameters(broker.urls, broker.config, "consumer")
                connection = connect(self.params, broker.urls)
            except Exception as exc:
                self._fail(exc if isinstance(exc, AMQPError) else AMQPUnavailableError(str(exc)))
                self.stopping.wait(backoff.next())
                continue
            began = time.monotonic()
            self.connection = connection
            with self.lock:
                self.error = None
            self.connected.set()
            self.attempted.set()
            if backoff.attempt:
                logger.warning("amqp consumer: connected again to RabbitMQ")
            try:
                self._serve(connection)
            except Exception as exc:
                if not self.stopping.is_set():
                    self._fail(AMQPUnavailableError(f"lost the connection to RabbitMQ ({exc}); reconnecting"))
            finally:
                self._teardown(connection)
            if time.monotonic() - began > 3.0:
                backoff.reset()
            if not self.stopping.is_set():
                self.stopping.wait(backoff.next())

    def _fail(self, exc: AMQPError) -> None:
        with self.lock:
            self.error = exc
        self.connected.clear()
        self.attempted.set()
        if not self.stopping.is_set():
            logger.warning("amqp consumer: %s", exc)

    def _serve(self, connection: BlockingConnection) -> None:
        while not self.stopping.is_set():
            self._run_commands()
            self._sync(connection)
            connection.process_data_events(time_limit=0.25)
        self._run_commands()

    def _run_commands(self) -> None:
        while True:
            try:
                command = self.commands.popleft()
            except IndexError:
                return
            command()

    def _run_settle(
        self, deliveries: list[tuple[int, int]], ack: bool, requeue: bool, done: threading.Event
    ) -> None:
        try:
            for serial, tag in deliveries:
                channel = self.live.get(serial)
                if channel is None or not channel.is_open:
                    continue  # RabbitMQ redelivers what a closed channel held
                # pika's asynchronous channel beneath: the frame is buffered and sent by this thread's
                # next poll (BlockingChannel.basic_ack would flush the socket once per message)
                impl: Any = channel._impl  # type: ignore[attr-defined]
                if ack:
                    impl.basic_ack(tag)
                else:
                    impl.basic_nack(tag, requeue=requeue)
        finally:
            done.set()

    def _sync(self, connection: BlockingConnection) -> None:
        """Create, re-create or release consumers as the states ask."""
        with self.lock:
            states = list(self.queues.values())
        now = time.monotonic()
        for state in states:
            if state.channel is not None and not state.channel.is_open:
                self._forget_channel(state)
            if (
                state.ctag is not None
                and state.channel is not None
                and state.ctag not in state.channel.consumer_tags
            ):
                state.ctag = None  # cancelled by RabbitMQ (the queue was deleted): declare it again
                state.declared = set()
            if (
                state.ctag is not None
                and state.active
                and now - state.last_asked > IDLE_RELEASE
                and not state.buffer.empty()
            ):
                logger.info(
                    "amqp consumer: %s not consumed for %.0fs; releasing its prefetch",
                    state.name,
                    IDLE_RELEASE,
                )
                self._cancel(state)
                state.active = False
                continue
            if not state.active or state.target <= 0:
                continue
            if state.ctag is not None and state.consumer_target >= state.target:
                continue
            try:
                self._start_consumer(connection, state)
            except pex.ChannelClosedByBroker as exc:
                self._forget_channel(state)
                state.active = False  # tried again at the next consume() call, not in a tight loop
                with self.lock:
                    state.error = AMQPError(
                        f"cannot consume queue {state.name!r}: RabbitMQ said ({exc.reply_code}) "
                        f"{exc.reply_text} (a queue declared with other arguments? check "
                        "amqp.queue_declare_args)"
                    )
                state.buffer.put(None)

    def _start_consumer(self, connection: BlockingConnection, state: _QueueState) -> None:
        if state.channel is None:
            channel = connection.channel()
            state.declared = set()
            self.broker.declare_queue(channel, state.declared, state.name)
            with self.lock:
                state.serial = next(self.serials)
                self.live[state.serial] = channel
            state.channel = channel
        channel = state.channel
        if state.ctag is not None:
            self._cancel(state)
        with self.lock:
            mine = sum(1 for key, q in self.handed.items() if q == state.name and key[0] == state.serial)
        # at creation, the deliveries this process holds for the queue never exceed the target
        prefetch = max(1, state.target - mine)
        channel.basic_qos(prefetch_count=prefetch)
        tag = f"machinery-{os.getpid()}-{state.name}-{next(self.ctags)}"
        state.ctag = channel.basic_consume(
            state.name, partial(self._on_message, state, state.serial), auto_ack=False, consumer_tag=tag
        )
        state.consumer_target = state.target
        logger.debug("amqp consumer: consuming %s with prefetch %d", state.name, prefetch)

    def _on_message(
        self,
        state: _QueueState,
        serial: int,
        _channel: BlockingChannel,
        method: Basic.Deliver,
        properties: BasicProperties,
        body: bytes,
    ) -> None:
        state.buffer.put(_Item(serial, method.delivery_tag or 0, bool(method.redelivered), body, properties))

    def _cancel(self, state: _QueueState) -> None:
        """Cancel the queue's consumer and give its buffered deliveries back to RabbitMQ."""
        channel, tag, state.ctag = state.channel, state.ctag, None
        if channel is None or tag is None or not channel.is_open:
            return
        channel.basic_cancel(tag)
        while True:
            try:
                item = state.buffer.get_nowait()
            except queue_mod.Empty:
                break
            if item is not None and item.serial == state.serial:
                channel.basic_nack(item.tag, requeue=True)

    def _forget_channel(self, state: _QueueState) -> None:
        with self.lock:
            self.live.pop(state.serial, None)
            for key in [k for k in self.handed if k[0] == state.serial]:
                del self.handed[key]
        state.channel = None
        state.ctag = None
        state.consumer_target = 0

    def _teardown(self, connection: BlockingConnection) -> None:
        """After the connection ended: every delivery of it is void (RabbitMQ requeued them)."""
        self.connected.clear()
        self.connection = None
        with self.lock:
            states = list(self.queues.values())
        for state in states:
            self._forget_channel(state)
            while True:
                try:
                    state.buffer.get_nowait()
                except queue_mod.Empty:
                    break
        self._run_commands()  # pending acks find no channel: dropped, their waiters released
        with contextlib.suppress(Exception):  # already broken
            if connection.is_open:
                connection.close()
