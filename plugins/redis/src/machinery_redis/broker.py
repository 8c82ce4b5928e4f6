"""``redis://``: Go Machinery's Redis broker layout, delivered at least once, without polling.

Layout (Go Machinery's, so Go producers and workers can share the queues):

- one LIST per queue, named by the routing key (default ``machinery_tasks``); publish = ``RPUSH``;
- the ``delayed_tasks`` ZSET (``Config.redis.delayed_tasks_key``) for ETAs: score = ETA in Unix ns,
  member = the message JSON, shared by every queue.

Reliability (Go's ``BLPOP`` loses the task when a worker dies, #586/#692): a consumer moves messages
atomically (``BLMOVE``) from the queue into its own **processing list**
``{queue}:machinery:processing:<consumer>``, registered in ``{queue}:machinery:consumers`` and guarded by
a heartbeat key ``{queue}:machinery:heartbeat:<consumer>`` with a TTL of ``lease`` seconds (default 30),
which a daemon thread (the broker's LeaseKeeper) refreshes every ``heartbeat`` seconds (default 10) while
the process lives. ``ack`` removes the message from the processing list (``LREM``). When a heartbeat key
expired (its process died), any live consumer's recovery step (a Lua script, run on a consume at most
every few seconds and by the heartbeat thread) moves that consumer's messages back to the head of the
queue, exactly once, marked as redelivered. Worst case from a SIGKILL to redelivery: ``lease +
heartbeat`` (40 s by default).

Fetching: one round trip per batch. ``BLMOVE`` blocks for the first message (no polling, #49), and a
Lua script in the same pipeline moves up to the other free slots (#559): never more than asked.

Delayed tasks: a daemon thread per consuming broker moves due messages to their queue, oldest first,
through a Lua script (atomic, so any number of movers is safe), sleeping until the next due time or
``delayed_tasks_poll_period``, whichever is sooner; switch it off with ``delayed_tasks_mover=false``
(#466) on processes that should not move them.

Redis Cluster: every key of a queue but the queue list carries the hash tag ``{queue}`` (the slot of the
bare queue name), and each queue has its own delayed ZSET ``{queue}:<delayed_tasks_key>`` and dead list
``{queue}.dead``, so every script touches one slot; Go producers' ETAs in the global ZSET are claimed and
pushed by :meth:`RedisBroker.move_go_delayed` (README: "Topologies").

Sentinel: a failover (see client.py) retires the consumer ids and turns the acks of messages fetched
before it into requeues, since the old master may have lost the task's final state.

Priority (opt-in, ``priority=true``): messages with ``Priority > 0`` go to a ZSET
``{queue}:machinery:priority`` consumed before the plain list (FIFO within a priority); priority 0 always
uses the Go-compatible list. A high-priority message published while a consumer is blocked on the empty
plain list is seen within ``normal_tasks_poll_period``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from machinery import backoff, codec
from machinery.broker import BaseBroker, DeadLetter, Delivery, decode_body
from machinery.capabilities import Capability
from machinery.config import Config
from machinery.delivery import BaseDelivery
from machinery.errors import BrokerError, ConfigError, MachineryError
from machinery.forking import at_fork
from machinery.lease import LeaseKeeper
from machinery.signature import Signature, TaskState

from . import scripts
from .client import Connection, outage_errors
from .settings import RedisSettings
from .url import RedisTarget, parse_bool, parse_url, same_server

if TYPE_CHECKING:
    from .backend import RedisBackend

__all__ = ["RedisBroker", "RedisDelivery", "queue_keys"]

logger = logging.getLogger("machinery.redis")

#: Longest interval between two recovery passes started by consume() (the heartbeat thread runs one
#: every ``heartbeat`` seconds too).
RECOVERY_INTERVAL = 5.0
#: Most messages moved by one fetch (Lua's unpack limits; far above any worker's free slots).
MAX_BATCH = 1000
MOVE_BATCH = 100
#: Seconds an ack may wait for the next fetch to carry it before the ack thread sends it.
ACK_DELAY = 0.02
#: PENDING states per chunk of a streamed batch (``send_tasks`` of more: see ``_send_streamed``); a
#: chunk of 128 ``add`` states is ~30 KB on the wire.
STATES_PER_CHUNK = 128
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _eta_ns(eta: datetime) -> int:
    delta = eta - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


@dataclass(frozen=True)
class QueueKeys:
    """The Redis keys of one queue. Everything but the queue itself (and, outside a cluster, its dead
    list) carries the hash tag of the queue's Redis Cluster slot: ``{queue}``."""

    queue: str
    tag: str
    registry: str
    redelivered: str
    priority: str
    priority_seq: str
    dead: str
    #: the wake-up list of the queue's delayed mover (cluster mode; one global list otherwise)
    wake: str
    cluster: bool = False

    def processing(self, consumer: str) -> str:
        return f"{self.tag}:machinery:processing:{consumer}"

    def heartbeat(self, consumer: str) -> str:
        return f"{self.tag}:machinery:heartbeat:{consumer}"

    def delayed(self, delayed_key: str) -> str:
        """The queue's own delayed ZSET (cluster mode): ``{queue}:<delayed_tasks_key>``."""
        return f"{self.tag}:{delayed_key}"

    @property
    def processing_prefix(self) -> str:
        return f"{self.tag}:machinery:processing:"

    @property
    def heartbeat_prefix(self) -> str:
        return f"{self.tag}:machinery:heartbeat:"


def _cluster_tag(queue: str) -> str:
    """A hash tag that puts keys in the slot of the key ``queue``: ``{queue}`` (a key without braces is
    hashed whole); for a queue name that holds a hash tag itself (``a{x}b``, hashed by ``x``), that tag
    followed by the name (``{x}a{x}b``), which stays unique per queue."""
    start = queue.find("{")
    if start == -1 and "}" not in queue:
        return "{" + queue + "}"
    end = queue.find("}", start + 1)
    if start == -1 or end == -1 or end == start + 1:
        raise ConfigError(
            f"queue name {queue!r}: on Redis Cluster a name with '{{' must hold a non-empty hash tag "
            "such as 'orders{eu}', or no braces at all"
        )
    return "{" + queue[start + 1 : end] + "}" + queue


def queue_keys(queue: str, cluster: bool = False) -> QueueKeys:
    """The keys of ``queue``; ``cluster=True`` for the Redis Cluster layout (README: "Redis Cluster")."""
    tag = _cluster_tag(queue) if cluster and ("{" in queue or "}" in queue) else "{" + queue + "}"
    return QueueKeys(
        queue=queue,
        tag=tag,
        registry=f"{tag}:machinery:consumers",
        redelivered=f"{tag}:machinery:redelivered",
        priority=f"{tag}:machinery:priority",
        priority_seq=f"{tag}:machinery:priority_seq",
        dead=f"{tag}.dead" if cluster else f"{queue}.dead",
        wake=f"{tag}:machinery:wake",
        cluster=cluster,
    )


@dataclass(eq=False)
class _Lease:
    """One consumer identity on one queue: its processing list and heartbeat key."""

    keys: QueueKeys
    consumer: str
    processing: str
    heartbeat: str
    #: the Sentinel failover epoch this consumer id was made in (a failover retires it)
    epoch: int = 0
    outstanding: int = 0
    registered: bool = False
    retired: bool = False


class RedisDelivery(BaseDelivery):
    """One leased message. ``signature`` is None (and ``error`` says why) for a malformed body."""

    __slots__ = ("_broker", "_lease", "_reason")

    def __init__(self, broker: RedisBroker, lease: _Lease, body: bytes, returns: int) -> None:
        # delivery_count: 1 + the times the message came back (lease recovery after a crash, or a
        # requeue), counted on the server, so the worker's delivery budget sees crashes (issue 16)
        super().__init__(body, queue=lease.keys.queue, delivery_count=1 + max(0, returns))
        self._broker = broker
        self._lease = lease
        self._reason = ""

    def _ack(self) -> None:
        """Remove the message for good."""
        self._broker._settle(self, "ack")

    def _nack(self, requeue: bool, delay: float | None, reason: str) -> None:
        """Back to the head of its queue, into ``delayed_tasks`` after ``delay`` seconds, or with
        ``requeue=False`` onto the dead-letter list ``<queue>.dead`` (``reason`` beside it)."""
        if not requeue:
            self._reason = reason
            self._broker._settle(self, "dead")
        elif delay is not None and delay > 0:
            self._broker._settle(self, "delay", delay)
        else:
            self._broker._settle(self, "requeue")

    def _extend(self, seconds: float) -> None:
        """Nothing to do: the broker's heartbeat keeps every message it holds leased while the process
        lives, however long the task runs."""
        return None


class RedisBroker(BaseBroker):
    """The Redis broker. Build it with :meth:`from_url`; it connects on first use."""

    capabilities = frozenset(
        {
            Capability.DELAY,
            Capability.PENDING_LIST,
            Capability.DELAYED_LIST,
            Capability.DEAD_LETTER,
            Capability.EXTEND_VISIBILITY,
            Capability.FIFO,
            Capability.REDELIVERY,
            Capability.MULTI_PROCESS,
        }
    )

    def __init__(
        self,
        target: RedisTarget | str,
        config: Config | None = None,
        *,
        lease: float | None = None,
        heartbeat: float | None = None,
        priority: bool | None = None,
        delayed_tasks_mover: bool | None = None,
    ) -> None:
        super().__init__(config)
        self.target = parse_url(target) if isinstance(target, str) else target
        options = self.target.options
        settings = RedisSettings.of(self.config)

        def option(name: str, given: Any, kind: type) -> Any:
            """A keyword argument wins over the URL's query parameter, which wins over Config.redis."""
            if given is not None:
                return given
            if name in options:
                text = options[name]
                return parse_bool(text, name) if kind is bool else kind(text)
            return getattr(settings, name)

        self.lease = float(option("lease", lease, float))
        self.heartbeat = float(option("heartbeat", heartbeat, float))
        if self.lease <= 0 or self.heartbeat <= 0:
            raise ConfigError("Redis broker: lease and heartbeat must be positive numbers of seconds")
        if self.heartbeat > self.lease / 2:
            raise ConfigError(
                f"Redis broker: heartbeat ({self.heartbeat:g} s) must be at most half the lease "
                f"({self.lease:g} s), or a busy process could lose its messages to recovery"
            )
        self.priority = bool(option("priority", priority, bool))
        self.delayed_tasks_mover = bool(option("delayed_tasks_mover", delayed_tasks_mover, bool))
        if self.priority:
            self.capabilities = type(self).capabilities | {Capability.PRIORITY}
        self.conn = Connection(self.target, self.config, BrokerError)
        #: Redis Cluster layout: per-queue delayed sets, tagged dead letters (README: "Redis Cluster")
        self.cluster = self.conn.cluster
        self._keys: dict[str, QueueKeys] = {}
        self._init_process_state()
        # after fork() a child must not share its parent's consumer ids or threads
        at_fork(self, "_init_process_state")

    def _init_process_state(self) -> None:
        self._lock = threading.Lock()
        self._leases: dict[str, _Lease] = {}
        self._retired: list[_Lease] = []
        self._later: list[tuple[RedisDelivery, str, float]] = []
        self._acks: list[tuple[RedisDelivery, tuple[Any, ...]]] = []
        self._ack_wake = threading.Event()
        self._ack_thread: threading.Thread | None = None
        self._last_recovery: dict[str, float] = {}
        self._stop = threading.Event()
        #: per mover ("" = the global mover; a queue name on a cluster): set to wake it up
        self._mover_wakes: dict[str, threading.Event] = {}
        #: the heartbeat: refreshes this process's consumer leases (per consumer id, not per message, so
        #: it runs while idle too), retries failed settles and runs recovery, every ``heartbeat`` seconds
        self._keeper: LeaseKeeper[RedisDelivery] = LeaseKeeper(
            self._heartbeat, self.heartbeat, name="redis-broker-heartbeat", renew_when_idle=True
        )
        self._movers: dict[str, threading.Thread] = {}
        self._host = f"{socket.gethostname()}-{os.getpid()}"
        #: cluster mode: this process's id as a mover of Go's global delayed ZSET
        self._go_mover = f"{self._host}-{uuid.uuid4().hex[:12]}"

    @classmethod
    def from_url(cls, url: str, config: Config, **options: Any) -> RedisBroker:
        """A broker for ``url`` (see :mod:`machinery_redis.url`). No I/O."""
        return cls(parse_url(url), config, **options)

    def __repr__(self) -> str:
        return f"<RedisBroker {self.target.describe()}>"

    # keys and settings read on each use (reloadable) ---------------------------------------------
    def keys(self, queue: str) -> QueueKeys:
        """The keys of ``queue`` in this broker's layout (one server or Redis Cluster)."""
        keys = self._keys.get(queue)
        if keys is None:
            keys = queue_keys(queue, self.cluster)
            if len(self._keys) < 10_000:
                self._keys[queue] = keys
        return keys

    @property
    def delayed_key(self) -> str:
        """Go's global delayed ZSET (on a cluster each queue has ``{queue}:<this name>`` instead)."""
        return RedisSettings.of(self.config).delayed_tasks_key or "delayed_tasks"

    def delayed_key_of(self, queue: str) -> str:
        """The ZSET holding ``queue``'s delayed messages."""
        return self.keys(queue).delayed(self.delayed_key) if self.cluster else self.delayed_key

    @property
    def wake_key(self) -> str:
        """A list a delayed publish pushes to, so one waiting mover re-reads the next due time at once."""
        return "{" + self.delayed_key + "}:machinery:wake"

    def wake_key_of(self, queue: str) -> str:
        return self.keys(queue).wake if self.cluster else self.wake_key

    @property
    def delayed_queues_key(self) -> str:
        """Cluster mode: the SET of queues that have had delayed messages (read by :meth:`delayed`)."""
        return "{" + self.delayed_key + "}:machinery:queues"

    def _delay_commands(self, queue: str, members: list[Any]) -> list[tuple[Any, ...]]:
        """``ZADD`` of (score, body, ...) for ``queue`` plus the mover's wake-up (and, on a cluster, the
        queue's registration for :meth:`delayed`)."""
        wake = self.wake_key_of(queue)
        commands: list[tuple[Any, ...]] = [
            ("ZADD", self.delayed_key_of(queue), *members),
            ("LPUSH", wake, 1),
            ("LTRIM", wake, 0, 0),
        ]
        if self.cluster:
            commands.append(("SADD", self.delayed_queues_key, queue))
        return commands

    def _wake_movers(self, queues: Iterable[str]) -> None:
        for name in queues if self.cluster else ("",):
            event = self._mover_wakes.get(name)
            if event is not None:
                event.set()

    @property
    def poll_period(self) -> float:
        """Machinery's ``normal_tasks_poll_period`` in seconds (0 → 1 s)."""
        ms = RedisSettings.of(self.config).normal_tasks_poll_period
        return (ms if ms and ms > 0 else 1000) / 1000.0

    @property
    def delayed_poll_period(self) -> float:
        """Machinery's ``delayed_tasks_poll_period`` in seconds (0 → 0.5 s)."""
        ms = RedisSettings.of(self.config).delayed_tasks_poll_period
        return (ms if ms and ms > 0 else 500) / 1000.0

    # producing -------------------------------------------------------------------------------
    def publish(self, signature: Signature) -> None:
        """One ``RPUSH`` (or ``ZADD delayed_tasks`` for a future ETA)."""
        self._send([signature])

    def publish_many(self, signatures: Sequence[Signature]) -> None:
        """One pipeline: one ``RPUSH`` per queue with every body, one ``ZADD`` for the ETAs."""
        self._send(signatures)

    def publish_with_states(
        self, signatures: Sequence[Signature], states: Sequence[TaskState], backend: RedisBackend
    ) -> bool:
        """Store ``states`` (the PENDING records) and publish ``signatures`` in one round trip, when
        ``backend`` is on this broker's server; False otherwise (the core then stores and publishes in
        two steps). The states go first in the pipeline, so a worker never sees a message whose PENDING
        state is not written yet. The core reaches it through the plugin's
        ``machinery_publish_with_states`` hook, which hands it both objects.

        Always False on a Redis Cluster: there the states and the messages are on different nodes,
        sent over different connections, and nothing orders one node's writes after another's. A worker
        could take a message, run it and store its result before the PENDING state reached its node;
        that PENDING (a plain ``SET``) then overwrote the result, and the task looked PENDING forever.
        The core's two steps store every state (acknowledged) before the first message is sent."""
        if self.cluster or not same_server(backend.target, self.target):
            return False
        if len(states) <= STATES_PER_CHUNK:
            self._send(signatures, backend.state_commands(states))
        else:
            self._send_streamed(signatures, states, backend)
        return True

    def _send(self, signatures: Sequence[Signature], before: Sequence[tuple[Any, ...]] = ()) -> None:
        if not signatures:
            return
        commands, delayed = self._publish_commands(signatures)
        try:
            replies = self.conn.run([*before, *commands])
        except RedisError as exc:
            raise self.conn.error("publish", exc) from None
        self._sent(replies, delayed)

    def _send_streamed(
        self, signatures: Sequence[Signature], states: Sequence[TaskState], backend: RedisBackend
    ) -> None:
        """A large batch: the PENDING states go out chunk by chunk as they are encoded, so Redis stores
        them while the messages are encoded; the messages follow in one last chunk. A message that
        cannot be encoded is found before any message is sent (some PENDING states are then stored, as
        when the backend and broker are two servers; they expire with the results)."""
        delayed: set[str] = set()

        def chunks() -> Iterator[list[tuple[Any, ...]]]:
            for start in range(0, len(states), STATES_PER_CHUNK):
                yield backend.state_commands(states[start : start + STATES_PER_CHUNK])
            commands, woken = self._publish_commands(signatures)
            delayed.update(woken)
            yield commands

        try:
            replies = self.conn.run_streamed(chunks())
        except RedisError as exc:
            raise self.conn.error("publish", exc) from None
        self._sent(replies, delayed)

    def _sent(self, replies: list[Any], delayed: set[str]) -> None:
        for reply in replies:
            if isinstance(reply, BaseException):
                raise self.conn.error("publish", reply)
        if delayed:
            self._wake_movers(delayed)

    def _publish_commands(self, signatures: Sequence[Signature]) -> tuple[list[tuple[Any, ...]], set[str]]:
        """The commands publishing ``signatures`` (one ``RPUSH`` per queue with every body, the ETAs in
        the delayed set, prioritised messages through the priority script), and the queues whose
        delayed-task movers should wake up."""
        now = time.time()
        plain: dict[str, list[bytes]] = {}
        prioritised: dict[tuple[str, int], list[bytes]] = {}
        #: per delayed ZSET (one on a server, one per queue on a cluster): {body: score}
        delayed: dict[str, dict[bytes, int]] = {}
        woken: set[str] = set()
        default = self.config.default_queue
        for sig in signatures:
            body = codec.encode_signature(sig)
            queue = sig.routing_key or default
            eta = sig.eta
            if eta is not None and eta.timestamp() > now:
                delayed.setdefault(queue if self.cluster else "", {})[body] = _eta_ns(eta)
                woken.add(queue)
            elif self.priority and sig.priority > 0:
                prioritised.setdefault((queue, sig.priority), []).append(body)
            else:
                plain.setdefault(queue, []).append(body)
        commands: list[tuple[Any, ...]] = [("RPUSH", queue, *bodies) for queue, bodies in plain.items()]
        for zset, members in delayed.items():
            commands += self._delay_commands(zset, [x for b, score in members.items() for x in (score, b)])
        for (queue, prio), bodies in prioritised.items():
            keys = self.keys(queue)
            command = scripts.PUBLISH_PRIORITY.command([keys.priority, keys.priority_seq], [prio, *bodies])
            commands.append(command)
        return commands, woken

    def publish_raw(self, queue: str, body: bytes | str) -> None:
        """``RPUSH`` ``body`` as is (tests and Go interop checks use it)."""
        self.conn.call("publish", lambda: self.conn.client.rpush(queue, body))

    # consuming -------------------------------------------------------------------------------
    def _lease_for(self, queue: str) -> _Lease:
        lease = self._leases.get(queue)
        epoch = self.conn.epoch
        if lease is not None and lease.epoch != epoch:
            # A Sentinel failover: writes the old master took just before it was demoted are lost
            # (asynchronous replication), so this consumer id's processing list may hold messages we
            # settled. Take a new id; the old one is released (its leftovers requeued) once settled.
            self._retire(lease)
            lease = None
        if lease is None:
            with self._lock:
                lease = self._leases.get(queue)
                if lease is None:
                    keys = self.keys(queue)
                    consumer = f"{self._host}-{uuid.uuid4().hex[:12]}"
                    lease = _Lease(keys, consumer, keys.processing(consumer), keys.heartbeat(consumer), epoch)
                    self._leases[queue] = lease
        if not lease.registered:
            self._register(lease)
            self._start_threads(queue)
        return lease

    def _register(self, lease: _Lease) -> None:
        commands: list[tuple[Any, ...]] = [
            ("SET", lease.heartbeat, b"1", "PX", int(self.lease * 1000)),
            ("SADD", lease.keys.registry, lease.consumer),
        ]
        if self.cluster:  # nack(delay) may give this queue a delayed set: list it for delayed()
            commands.append(("SADD", self.delayed_queues_key, lease.keys.queue))
        try:
            replies = self.conn.run(commands)
        except RedisError as exc:
            raise self.conn.error("register consumer", exc) from None
        for reply in replies:
            if isinstance(reply, BaseException):
                raise self.conn.error("register consumer", reply)
        lease.registered = True

    def consume(self, queue: str, max_messages: int, timeout: float) -> list[Delivery]:
        """Lease up to ``max_messages`` messages of ``queue`` (one round trip per batch), waiting up to
        ``timeout`` seconds for the first."""
        if max_messages <= 0:
            return []
        if self._stop.is_set():
            self._init_process_state()  # used again after close(): start afresh
        count = min(max_messages, MAX_BATCH)
        lease = self._lease_for(queue)
        now = time.monotonic()
        if now - self._last_recovery.get(queue, 0.0) >= min(RECOVERY_INTERVAL, self.heartbeat):
            self._last_recovery[queue] = now
            self._recover(lease.keys)
        keys = lease.keys
        take_keys = [queue, lease.processing, keys.redelivered, keys.priority, keys.registry, lease.heartbeat]
        lease_ms = int(self.lease * 1000)
        use_priority = b"1" if self.priority else b"0"
        deadline = now + max(0.0, timeout)
        while True:
            if self.priority:
                # A non-blocking look first, so waiting prioritised messages go before the plain list.
                bodies, flags = self._fetch(lease, take_keys, count, use_priority, lease_ms, 0.0)
                if bodies:
                    return self._deliveries(lease, bodies, flags)
            # Machinery's normal_tasks_poll_period is the longest single blocking wait (Go's BLPOP
            # timeout); the loop goes on until the caller's timeout.
            block = min(deadline - time.monotonic(), self.poll_period)
            if block <= 0.001:
                bodies, flags = self._fetch(lease, take_keys, count, use_priority, lease_ms, 0.0)
                return self._deliveries(lease, bodies, flags)
            bodies, flags = self._fetch(lease, take_keys, count, use_priority, lease_ms, block)
            if bodies or time.monotonic() >= deadline:
                return self._deliveries(lease, bodies, flags)

    def _fetch(
        self, lease: _Lease, keys: list[str], count: int, use_priority: bytes, lease_ms: int, block: float
    ) -> tuple[list[bytes], list[int]]:
        """One round trip: the pending acks, then ``BLMOVE`` (when ``block`` > 0) and the TAKE script for
        the other free slots."""
        with self._lock:
            acks, self._acks = self._acks, []
        commands, epoch = self._ack_commands(acks)
        if block > 0:
            block = self.conn.max_block(block)
            commands.append(("BLMOVE", lease.keys.queue, lease.processing, "LEFT", "RIGHT", block))
        commands.append(
            scripts.TAKE.command(keys, [count - (block > 0), use_priority, lease.consumer, lease_ms])
        )
        try:
            replies = self.conn.run(commands, blocking=True)
        except RedisError as exc:
            self._unsent_acks(acks)
            self._retire(lease)
            raise self.conn.error("consume", exc) from None
        self._acked(acks, epoch)
        first = replies[-2] if block > 0 else None
        taken = replies[-1]
        try:
            for reply in (first, taken):
                if isinstance(reply, Exception):
                    raise reply
            out, flags, marked = taken
            if first is not None:
                first_flag = 0
                if marked:
                    first_flag = int(self.conn.client.hget(lease.keys.redelivered, _sha1(first)) or 0)
                out = [first, *out]
                flags = [first_flag, *flags] if flags else ([first_flag] if first_flag else [])
        except RedisError as exc:
            self._retire(lease)
            raise self.conn.error("consume", exc) from None
        return out, flags

    def _deliveries(self, lease: _Lease, bodies: list[bytes], flags: list[int]) -> list[Delivery]:
        if not bodies:
            return []
        if flags:
            out = [RedisDelivery(self, lease, b, int(f)) for b, f in zip(bodies, flags, strict=False)]
        else:
            out = [RedisDelivery(self, lease, b, 0) for b in bodies]
        with self._lock:
            lease.outstanding += len(out)
        return list(out)

    def _retire(self, lease: _Lease) -> None:
        """After a failed fetch a message may sit in this processing list unknown to us: switch to a new
        consumer id; the old one is released (its leftovers requeued) once its deliveries are settled."""
        with self._lock:
            if self._leases.get(lease.keys.queue) is lease:
                del self._leases[lease.keys.queue]
                if lease.registered:
                    lease.retired = True
                    self._retired.append(lease)

    # settling --------------------------------------------------------------------------------
    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack several deliveries in one round trip (the worker's batching writer uses it)."""
        mine: list[RedisDelivery] = []
        for delivery in deliveries:
            if isinstance(delivery, RedisDelivery) and delivery._broker is self:
                if delivery.claim():
                    mine.append(delivery)
            else:
                delivery.ack()
        self._settle_many(mine, "ack")

    def _settle(self, delivery: RedisDelivery, action: str, delay: float = 0.0) -> None:
        self._settle_many([delivery], action, delay)

    def _settle_many(self, todo: list[RedisDelivery], action: str, delay: float = 0.0) -> None:
        """Settle deliveries already claimed (``BaseDelivery.claim``): each exactly once."""
        with self._lock:
            if action == "ack" and todo:
                # Sent with the next fetch (no round trip of their own), or by the ack thread within
                # ACK_DELAY when no fetch comes: the task's final state is already stored; should the
                # process die before they are sent, the messages are redelivered (at least once).
                self._acks.extend((d, self._command(d, "ack", 0.0)) for d in todo)
                self._start_ack_thread()
        if not todo or action == "ack":
            if todo:
                self._ack_wake.set()
            return
        commands = [self._command(d, action, delay) for d in todo]
        try:
            replies = self.conn.run(commands)
        except RedisError as exc:
            if not isinstance(exc, outage_errors):
                self._done(todo)
                raise self.conn.error(action, exc) from None
            # The messages stay in our processing list (leased by our heartbeat); settle them when
            # the server is back rather than losing the intent.
            logger.warning(
                "Redis at %s: %s of %d message(s) failed (%s); retrying in the background",
                self.target.describe(),
                action,
                len(todo),
                exc,
            )
            with self._lock:
                self._later.extend((d, action, delay) for d in todo)
            return
        self._done(todo)
        if action == "delay":
            self._wake_movers({d.queue for d in todo})
        errors = [reply for reply in replies if isinstance(reply, BaseException)]
        if errors:
            raise self.conn.error(action, errors[0])

    def _ack_commands(
        self, acks: list[tuple[RedisDelivery, tuple[Any, ...]]]
    ) -> tuple[list[tuple[Any, ...]], int]:
        """The commands that send ``acks`` now, and the failover epoch they were made in. After a
        Sentinel failover, the ack of a message fetched before it is a requeue instead: the task's final
        state may have been written to the old master in its last moments and lost with it, so the
        message runs again rather than risk a task that never completes (at least once)."""
        epoch = self.conn.epoch
        if self.conn.topology is None:
            return [command for _, command in acks], epoch
        return [
            command if d._lease.epoch == epoch else self._command(d, "requeue", 0.0) for d, command in acks
        ], epoch

    def _acked(self, acks: list[tuple[RedisDelivery, tuple[Any, ...]]], epoch: int = 0) -> None:
        if not acks:
            return
        self._done([d for d, _ in acks])
        if self.conn.epoch == epoch:
            return
        # The failover was noticed while these acks travelled (they may have reached the new master
        # through a new connection): give the messages of before the failover back to be safe.
        late = [d for d, _ in acks if d._lease.epoch == epoch]
        if late:
            try:
                self.conn.run([self._push_back(d) for d in late])
            except RedisError as exc:
                logger.warning(
                    "Redis at %s: could not requeue %d message(s) after a failover: %s",
                    self.target.describe(),
                    len(late),
                    exc,
                )

    def _push_back(self, delivery: RedisDelivery) -> tuple[Any, ...]:
        """Put a message back at the head of its queue (or in its priority set) without touching any
        processing list."""
        keys = delivery._lease.keys
        sig = delivery.signature
        if self.priority and sig is not None and sig.priority > 0:
            score = (255 - min(sig.priority, 255)) * scripts.PRIORITY_BAND
            return ("ZADD", keys.priority, score, delivery.body)
        return ("LPUSH", keys.queue, delivery.body)

    def _unsent_acks(self, acks: list[tuple[RedisDelivery, tuple[Any, ...]]]) -> None:
        """Acks whose round trip failed: send them again later (LREM twice is harmless)."""
        if acks:
            with self._lock:
                self._acks[:0] = acks

    def flush_acks(self) -> None:
        """Send the acks not yet sent, now. Raises when Redis cannot be reached (they stay queued)."""
        with self._lock:
            acks, self._acks = self._acks, []
        if not acks:
            return
        commands, epoch = self._ack_commands(acks)
        try:
            replies = self.conn.run(commands)
        except RedisError as exc:
            self._unsent_acks(acks)
            raise self.conn.error("ack", exc) from None
        self._acked(acks, epoch)
        for reply in replies:
            if isinstance(reply, BaseException):
                logger.warning("Redis at %s: an ack failed: %s", self.target.describe(), reply)

    def _start_ack_thread(self) -> None:
        # called with self._lock held
        if self._ack_thread is None or not self._ack_thread.is_alive():
            self._ack_thread = threading.Thread(
                target=self._ack_loop, args=(self._stop,), name="redis-broker-acks", daemon=True
            )
            self._ack_thread.start()

    def _ack_loop(self, stop: threading.Event) -> None:
        failures = 0
        while not stop.is_set():
            self._ack_wake.wait()
            self._ack_wake.clear()
            if stop.wait(backoff.delay(failures + 1, ACK_DELAY, ACK_DELAY * 2**7, jitter=0.0)):
                return
            try:
                self.flush_acks()
                failures = 0
            except MachineryError as exc:
                failures = min(failures + 1, 7)
                self._ack_wake.set()
                logger.debug("sending acks failed: %s", exc)

    def _done(self, deliveries: list[RedisDelivery]) -> None:
        with self._lock:
            for delivery in deliveries:
                delivery._lease.outstanding -= 1

    def _command(self, delivery: RedisDelivery, action: str, delay: float) -> tuple[Any, ...]:
        lease = delivery._lease
        keys = lease.keys
        body = delivery.body
        if action == "ack":
            if delivery.redelivered:
                return scripts.ACK_REDELIVERED.command([lease.processing, keys.redelivered], [body])
            return ("LREM", lease.processing, 1, body)
        if action == "requeue":
            score = b""
            sig = delivery.signature
            if self.priority and sig is not None and sig.priority > 0:
                score = str((255 - min(sig.priority, 255)) * scripts.PRIORITY_BAND).encode()
            return scripts.NACK_REQUEUE.command(
                [lease.processing, keys.queue, keys.redelivered, keys.priority], [body, score]
            )
        if action == "delay":
            due = time.time_ns() + int(delay * 1e9)
            delayed, wake = self.delayed_key_of(keys.queue), self.wake_key_of(keys.queue)
            return scripts.NACK_DELAY.command(
                [lease.processing, delayed, keys.redelivered, wake], [body, due]
            )
        if action == "dead":
            meta = {
                "reason": delivery._reason,
                "time": time.time(),
                "delivery_count": delivery.delivery_count,
            }
            return scripts.DEAD.command(
                [lease.processing, keys.dead, keys.redelivered, keys.dead + ":meta"], [body, json.dumps(meta)]
            )
        raise ValueError(action)  # pragma: no cover - internal

    def _retry_later(self) -> None:
        with self._lock:
            todo, self._later = self._later, []
        if not todo:
            return
        try:
            self.conn.run([self._command(d, action, delay) for d, action, delay in todo])
        except RedisError:
            with self._lock:
                self._later[:0] = todo
            return
        self._done([d for d, _, _ in todo])
        logger.info("Redis at %s: %d delayed ack(s)/nack(s) done", self.target.describe(), len(todo))

    # recovery and heartbeat ------------------------------------------------------------------
    def _recover(self, keys: QueueKeys, only: str = "") -> int:
        """Requeue the messages of dead consumers of one queue (or of consumer ``only``)."""
        try:
            moved = scripts.RECOVER(
                self.conn.client,
                [keys.registry, keys.queue, keys.redelivered, keys.priority],
                [keys.processing_prefix, keys.heartbeat_prefix, only, b"1" if self.priority else b"0"],
            )
        except RedisError as exc:
            raise self.conn.error("recovery", exc) from None
        if moved and not only:
            logger.warning(
                "Redis at %s: requeued %d message(s) of dead consumer(s) of queue %r",
                self.target.describe(),
                moved,
                keys.queue,
            )
        return int(moved)

    def recover(self, queue: str) -> int:
        """Run the recovery step for ``queue`` now; the number of messages requeued."""
        return self._recover(self.keys(queue))

    def _start_threads(self, queue: str) -> None:
        with self._lock:
            self._keeper.start()
            if not self.delayed_tasks_mover:
                return
            # One mover for Go's global delayed ZSET (""); on a cluster also one per consumed queue
            # (each queue has its own delayed ZSET, in its slot).
            for name in ("", queue) if self.cluster else ("",):
                mover = self._movers.get(name)
                if mover is None or not mover.is_alive():
                    self._mover_wakes.setdefault(name, threading.Event())
                    mover = threading.Thread(
                        target=self._mover_loop,
                        args=(self._stop, name),
                        name=f"redis-delayed-mover{'-' + name if name else ''}",
                        daemon=True,
                    )
                    self._movers[name] = mover
                    mover.start()

    def _heartbeat(self, _deliveries: list[RedisDelivery]) -> None:
        # the keeper logs a failure (WARNING once, then DEBUG) and retries sooner, backing off
        self.beat()

    def beat(self) -> None:
        """One heartbeat: refresh this process's leases, retry failed acks, release retired consumer ids,
        recover dead consumers' messages. The broker's LeaseKeeper calls it every ``heartbeat`` seconds."""
        epoch = self.conn.epoch
        with self._lock:
            stale = [lease for lease in self._leases.values() if lease.epoch != epoch]
        for lease in stale:  # a Sentinel failover: see _lease_for
            self._retire(lease)
        with self._lock:
            live = [lease for lease in self._leases.values() if lease.registered]
            retired = list(self._retired)
        holding = live + [lease for lease in retired if lease.outstanding > 0]
        if holding:
            commands: list[tuple[Any, ...]] = []
            for lease in holding:
                commands.append(("SET", lease.heartbeat, b"1", "PX", int(self.lease * 1000)))
                commands.append(("SADD", lease.keys.registry, lease.consumer))
            try:
                self.conn.run(commands)
            except RedisError as exc:
                raise self.conn.error("heartbeat", exc) from None
        if self._later:
            self._retry_later()
        for lease in retired:
            if lease.outstanding <= 0:
                self._recover(lease.keys, only=lease.consumer)
                with self._lock:
                    if lease in self._retired:
                        self._retired.remove(lease)
        now = time.monotonic()
        for lease in live:
            self._last_recovery[lease.keys.queue] = now
            self._recover(lease.keys)

    def _mover_loop(self, stop: threading.Event, queue: str) -> None:
        failures = 0
        go_only = self.cluster and not queue
        while not stop.is_set():
            try:
                wait = self.move_go_delayed() if go_only else self.move_delayed(queue or None)
                failures = 0
            except MachineryError as exc:
                failures += 1
                wait = backoff.delay(failures, 0.5, 5.0)
                logger.debug("delayed-task mover failed: %s", exc)
            except Exception:
                failures += 1
                wait = 5.0
                logger.exception("delayed-task mover failed")
            if wait > 0 and not stop.is_set():
                # Go's producers push no wake-up: that mover sleeps until the next due time or the
                # period (as Go's own poller does)
                self._mover_sleep(wait, failures > 0 or go_only, queue)

    def _mover_sleep(self, seconds: float, failing: bool, queue: str = "") -> None:
        """Sleep until a delayed publish (any process: the wake list; this one: an event) or ``seconds``."""
        event = self._mover_wakes.setdefault(queue, threading.Event())
        if failing or event.is_set():
            event.wait(seconds)
            event.clear()
            return
        wake = self.wake_key_of(queue) if queue else self.wake_key
        try:
            self.conn.run([("BLPOP", wake, self.conn.max_block(seconds))], blocking=True)
        except RedisError as exc:
            logger.debug("delayed-task mover: waiting failed: %s", exc)
            event.wait(min(seconds, 1.0))
        event.clear()

    def move_delayed(self, queue: str | None = None) -> float:
        """Move due delayed messages to their queues (oldest first); seconds until the next may be due.

        One server: Go's global ZSET, every queue (``queue`` is ignored). Redis Cluster: the delayed ZSET
        of ``queue``, or of every queue this process consumes when None."""
        if self.cluster:
            if queue is None:
                with self._lock:
                    queues = list(dict.fromkeys(lease.keys.queue for lease in self._leases.values()))
                return min((self._move_queue(q) for q in queues), default=self.delayed_poll_period)
            return self._move_queue(queue)
        args = [MOVE_BATCH, self.config.default_queue, b"1" if self.priority else b"0"]
        try:
            moved, next_score, now = scripts.MOVE_DUE(self.conn.client, [self.delayed_key], args)
        except RedisError as exc:
            raise self.conn.error("moving delayed tasks", exc) from None
        return self._next_wait(moved, next_score, now)

    def move_go_delayed(self) -> float:
        """Redis Cluster: move the due messages of Go's global delayed ZSET (written by Go producers) to
        their queues, oldest first, at least once (claimed into this mover's list in the ZSET's slot,
        pushed to their queues, then the list is dropped; a dead mover's claims go back into the ZSET).
        Seconds until the next may be due."""
        tag = "{" + self.delayed_key + "}"
        mover = self._go_mover
        moving, heartbeat, movers = (
            f"{tag}:machinery:moving:{mover}",
            f"{tag}:machinery:mover:{mover}",
            f"{tag}:machinery:movers",
        )
        try:
            due, next_score, now = scripts.CLAIM_GO_DELAYED(
                self.conn.client,
                [self.delayed_key, moving, heartbeat, movers],
                [
                    MOVE_BATCH,
                    mover,
                    int(self.lease * 1000),
                    f"{tag}:machinery:moving:",
                    f"{tag}:machinery:mover:",
                ],
            )
        except RedisError as exc:
            raise self.conn.error("moving Go's delayed tasks", exc) from None
        if due:
            try:
                replies = self.conn.run([self._route(body) for body in due])
                failed = [reply for reply in replies if isinstance(reply, BaseException)]
                if failed:
                    raise failed[0]
                self.conn.run([("DEL", moving, heartbeat), ("SREM", movers, mover)])
            except RedisError as exc:
                # the claims stay in that list until its heartbeat expires and a mover puts them back
                self._go_mover = f"{self._host}-{uuid.uuid4().hex[:12]}"
                raise self.conn.error("moving Go's delayed tasks", exc) from None
        return self._next_wait(len(due), next_score, now)

    def _route(self, body: bytes) -> tuple[Any, ...]:
        """The command publishing a (due) message body to the queue named by its ``RoutingKey``."""
        queue = self.config.default_queue
        priority = 0
        try:
            fields = json.loads(body)
            if isinstance(fields, dict):
                if isinstance(fields.get("RoutingKey"), str) and fields["RoutingKey"]:
                    queue = fields["RoutingKey"]
                if isinstance(fields.get("Priority"), int):
                    priority = min(fields["Priority"], 255)
        except ValueError:
            pass
        if self.priority and priority > 0:
            keys = self.keys(queue)
            return scripts.PUBLISH_PRIORITY.command([keys.priority, keys.priority_seq], [priority, body])
        return ("RPUSH", queue, body)

    def _move_queue(self, queue: str) -> float:
        keys = self.keys(queue)
        try:
            moved, next_score, now = scripts.MOVE_DUE_QUEUE(
                self.conn.client,
                [keys.delayed(self.delayed_key), queue, keys.priority, keys.priority_seq],
                [MOVE_BATCH, b"1" if self.priority else b"0"],
            )
        except RedisError as exc:
            raise self.conn.error("moving delayed tasks", exc) from None
        return self._next_wait(moved, next_score, now)

    def _next_wait(self, moved: int, next_score: Any, now: Any) -> float:
        if self.conn.health.down_since is not None:
            self.conn.health.ok()
        if moved >= MOVE_BATCH:
            return 0.0
        period = self.delayed_poll_period
        if next_score is None:
            return period
        return max(0.0, min(period, (float(next_score) - float(now)) / 1e9))

    # inspecting ------------------------------------------------------------------------------
    def _signatures(self, bodies: Iterable[bytes]) -> list[Signature]:
        return [sig for body in bodies if (sig := decode_body(body)[0]) is not None]

    def pending(self, queue: str) -> list[Signature]:
        """Messages waiting in ``queue`` in consume order (Machinery's ``LRANGE``); malformed ones are
        skipped. With priority on, the prioritised ones come first."""
        keys = self.keys(queue)

        def read() -> list[bytes]:
            if not self.priority:
                return list(self.conn.client.lrange(queue, 0, -1))
            prioritised, plain = self.conn.run([("ZRANGE", keys.priority, 0, -1), ("LRANGE", queue, 0, -1)])
            for reply in (prioritised, plain):
                if isinstance(reply, BaseException):
                    raise reply
            return [*prioritised, *plain]

        return self._signatures(self.conn.call("pending", read))

    def delayed(self) -> list[Signature]:
        """Messages waiting for their ETA, every queue, soonest first (Machinery's ``ZRANGE``; on a
        cluster, of every queue's delayed ZSET)."""
        if not self.cluster:
            return self._signatures(
                self.conn.call("delayed", lambda: self.conn.client.zrange(self.delayed_key, 0, -1))
            )

        def read() -> list[bytes]:
            queues = sorted(self.conn.client.smembers(self.delayed_queues_key))
            names = [q.decode() if isinstance(q, bytes) else str(q) for q in queues]
            # every queue's own ZSET, and Go's global one (Go producers' ETAs)
            zsets = [self.delayed_key_of(q) for q in names] + [self.delayed_key]
            replies = self.conn.run([("ZRANGE", key, 0, -1, "WITHSCORES") for key in zsets])
            scored: list[tuple[float, bytes]] = []
            for reply in replies:
                if isinstance(reply, BaseException):
                    raise reply
                if reply and isinstance(reply[0], list):  # RESP3: [[member, score], ...]
                    scored += [(float(score), member) for member, score in reply]
                else:  # RESP2: [member, score, ...]
                    scored += [(float(reply[i + 1]), reply[i]) for i in range(0, len(reply), 2)]
            return [body for _, body in sorted(scored, key=lambda item: item[0])]

        return self._signatures(self.conn.call("delayed", read))

    def purge(self, queue: str) -> None:
        """Delete the waiting messages of ``queue`` (its list, its priority set and its delayed ones).
        Messages leased by consumers are left to them."""
        keys = self.keys(queue)

        def purge() -> None:
            if self.cluster:  # the queue's own delayed set, in the queue's slot (and Go's below)
                self.conn.client.delete(queue, keys.priority, keys.delayed(self.delayed_key))
            else:
                self.conn.client.delete(queue, keys.priority)
            scripts.PURGE_DELAYED(self.conn.client, [self.delayed_key], [queue, self.config.default_queue])

        self.conn.call("purge", purge)

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` messages nacked with ``requeue=False``, oldest first: of ``queue`` (the list
        ``<queue>.dead``, ``{<queue>}.dead`` on a cluster, with reasons in ``<that>:meta``), or of every
        queue when None (found with ``SCAN``)."""
        if queue is not None:
            return self._dead_letters(queue, limit)
        letters: list[DeadLetter] = []
        for name in self._dead_queues():
            letters += self._dead_letters(name, limit)
        return sorted(letters, key=lambda letter: letter.time)[: max(0, limit)]

    def _dead_letters(self, queue: str, limit: int) -> list[DeadLetter]:
        key = self.keys(queue).dead

        def read() -> tuple[list[bytes], list[bytes]]:
            bodies, metas = self.conn.run([("LRANGE", key, 0, -1), ("LRANGE", key + ":meta", 0, -1)])
            for reply in (bodies, metas):
                if isinstance(reply, BaseException):
                    raise reply
            return list(bodies), list(metas)

        bodies, metas = self.conn.call("dead letters", read)
        # Bodies dead-lettered before reasons were kept have no meta entry: align the lists at the tail.
        offset = len(bodies) - len(metas)
        out = []
        for i, body in enumerate(bodies[: max(0, limit)]):
            meta = _dead_meta(metas[i - offset]) if i >= offset else {}
            when = datetime.fromtimestamp(float(meta.get("time", 0.0)), UTC)
            count = int(meta.get("delivery_count", 1))
            out.append(DeadLetter(bytes(body), str(meta.get("reason", "")), when, count, queue))
        return out

    def _dead_queues(self) -> list[str]:
        """Queues with a dead list (the names of the keys ``<queue>.dead`` / ``{<queue>}.dead``)."""

        def scan() -> list[str]:
            names = []
            for key in self.conn.client.scan_iter(match="*.dead", _type="list"):
                name = key.decode() if isinstance(key, bytes) else str(key)
                name = name[: -len(".dead")]
                if self.cluster and name.startswith("{") and name.endswith("}"):
                    name = name[1:-1]
                names.append(name)
            return sorted(set(names))

        return list(self.conn.call("dead letters", scan))

    def purge_dead_letters(self, queue: str) -> None:
        key = self.keys(queue).dead
        self.conn.call("purge dead letters", lambda: self.conn.client.delete(key, key + ":meta"))

    def processing(self, queue: str) -> list[bytes]:
        """Messages this process holds from ``queue`` (its processing lists), oldest first."""
        with self._lock:
            leases = [
                lease for lease in [*self._leases.values(), *self._retired] if lease.keys.queue == queue
            ]

        def read() -> list[bytes]:
            return [body for lease in leases for body in self.conn.client.lrange(lease.processing, 0, -1)]

        self.flush_acks()
        return self.conn.call("processing", read)

    # closing ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the threads, give every unsettled message back to its queue at once, disconnect.
        Idempotent; the broker may be used again afterwards (it starts afresh)."""
        with self._lock:
            self._stop.set()
            threads = [t for t in (self._ack_thread, *self._movers.values()) if t is not None]
            leases = [lease for lease in [*self._leases.values(), *self._retired] if lease.registered]
            self._leases, self._retired = {}, []
        self._keeper.close()  # outside self._lock: a heartbeat in progress takes it
        for event in list(self._mover_wakes.values()):
            event.set()
        self._ack_wake.set()
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5.0)
        try:
            self.flush_acks()
        except MachineryError as exc:
            logger.warning("could not send %d ack(s) at close: %s", len(self._acks), exc)
        if self._later:
            try:
                self._retry_later()
            except Exception:  # pragma: no cover - best effort
                logger.debug("late acks failed at close", exc_info=True)
        for lease in leases:
            try:
                returned = self._recover(lease.keys, only=lease.consumer)
            except MachineryError as exc:
                logger.warning(
                    "could not return unsettled messages of %r at close: %s", lease.keys.queue, exc
                )
                continue
            if returned:
                logger.info("returned %d unsettled message(s) to %r", returned, lease.keys.queue)
        self.conn.close()


def _dead_meta(raw: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(raw)
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _sha1(body: bytes) -> str:
    import hashlib

    return hashlib.sha1(body).hexdigest()
