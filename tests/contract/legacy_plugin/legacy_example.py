"""The compatibility proof of issue 15: the worked example plugin as it was written against the
documented hooks and protocols of machinery-core 0.1 (main at 4ec642d), kept verbatim except for its
scheme and distribution (``legacy://``, so it can sit next to the template) and this paragraph.
tests/contract/test_legacy_plugin.py runs it through the kit. Do not modernise it: it must keep
working as third-party plugins written then are written.

``example://NAME``: a complete Machinery transport in one small module, kept in a dict.

Objects built from the same ``example://NAME`` share one store (in this process only). The broker
leases consumed messages for ``?lease=SECONDS`` (default 30): a message not acked in time, or held by a
broker that is closed, is delivered again. The backend wakes ``wait()`` as soon as a state lands and
forgets results ``results_expire_in`` seconds after their last write.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from machinery import codec
from machinery.backend import BaseBackend
from machinery.broker import BaseBroker, Delivery
from machinery.capabilities import Capability
from machinery.config import Config
from machinery.errors import ConfigError, MessageError, UnknownGroupError
from machinery.plugins import Kind, SchemeRow, hookimpl, scheme_of
from machinery.signature import GroupMeta, Signature, State, TaskState, now_utc

__all__ = ["ExampleBackend", "ExampleBroker", "ExampleLock"]

SCHEME = "legacy"
DISTRIBUTION = "machinery-legacy-example"


# -- the hooks: the URL scheme picks this plugin ---------------------------------------------------
@hookimpl
def machinery_schemes() -> list[SchemeRow]:
    kinds: tuple[Kind, ...] = ("broker", "backend", "lock")
    return [SchemeRow(SCHEME, kind, DISTRIBUTION) for kind in kinds]


@hookimpl
def machinery_broker(url: str, config: Config) -> ExampleBroker | None:
    return ExampleBroker(url, config) if scheme_of(url) == SCHEME else None


@hookimpl
def machinery_backend(url: str, config: Config) -> ExampleBackend | None:
    return ExampleBackend(url, config) if scheme_of(url) == SCHEME else None


@hookimpl
def machinery_lock(url: str, config: Config) -> ExampleLock | None:
    return ExampleLock(url, config) if scheme_of(url) == SCHEME else None


# -- the shared store ------------------------------------------------------------------------------
@dataclass
class _Message:
    id: int
    queue: str
    body: bytes
    deliveries: int = 0


@dataclass
class _Store:
    cond: threading.Condition = field(default_factory=threading.Condition)
    ready: dict[str, deque[_Message]] = field(default_factory=dict)
    delayed: list[tuple[float, _Message]] = field(default_factory=list)  # (due, message)
    leased: dict[int, tuple[_Message, float, str]] = field(default_factory=dict)  # id -> (msg, until, owner)
    states: dict[str, tuple[TaskState, float]] = field(default_factory=dict)  # uuid -> (state, expires)
    groups: dict[str, tuple[GroupMeta, float]] = field(default_factory=dict)
    locks: dict[str, tuple[str, float]] = field(default_factory=dict)  # key -> (owner, expires)


_stores: dict[str, _Store] = {}
_stores_lock = threading.Lock()
_ids = itertools.count(1)


def _parse(url: str) -> tuple[_Store, dict[str, list[str]]]:
    parts = urlsplit(url)
    name = (parts.netloc + parts.path).strip("/")
    with _stores_lock:
        store = _stores.setdefault(name, _Store())
    return store, parse_qs(parts.query)


# -- broker ----------------------------------------------------------------------------------------
class ExampleDelivery:
    """One leased message; ``signature`` is None (and ``error`` says why) for a malformed body."""

    def __init__(self, broker: ExampleBroker, message: _Message) -> None:
        self._broker = broker
        self._message = message
        self._deliveries = message.deliveries
        self.body = message.body
        self.redelivered = message.deliveries > 1
        self.error = ""
        self.signature: Signature | None
        try:
            self.signature = codec.decode_signature(message.body)
        except MessageError as exc:
            self.signature, self.error = None, str(exc)

    def _take(self) -> bool:
        """Remove our lease; False when it is no longer ours (expired and delivered again)."""
        leased = self._broker._store.leased.get(self._message.id)
        if leased is None or leased[2] != self._broker.owner or self._message.deliveries != self._deliveries:
            return False
        del self._broker._store.leased[self._message.id]
        return True

    def ack(self) -> None:
        with self._broker._store.cond:
            self._take()

    def nack(self, requeue: bool = True, delay: float | None = None, reason: str = "") -> None:
        """Back to the queue (after ``delay``), or dropped with ``requeue=False``: this transport keeps
        no dead letters, so ``reason`` is not stored."""
        store = self._broker._store
        with store.cond:
            if self._take() and requeue:
                self._broker._put(self._message, delay or 0.0)

    def extend(self, seconds: float) -> None:
        store = self._broker._store
        with store.cond:
            leased = store.leased.get(self._message.id)
            if leased is not None and leased[2] == self._broker.owner:
                store.leased[self._message.id] = (
                    leased[0],
                    max(leased[1], time.monotonic() + seconds),
                    leased[2],
                )


class ExampleBroker(BaseBroker):
    """FIFO queues with ETAs, leases and redelivery, in a dict."""

    capabilities = frozenset(
        {
            Capability.DELAY,
            Capability.FIFO,
            Capability.PENDING_LIST,
            Capability.REDELIVERY,
            Capability.EXTEND_VISIBILITY,
        }
    )

    def __init__(self, url: str, config: Config | None = None) -> None:
        super().__init__(config)
        self._store, query = _parse(url)
        try:
            self.lease = float(query.get("lease", ["30"])[0])
        except ValueError:
            raise ConfigError(f"{url}: lease must be a number of seconds") from None
        self.owner = uuid.uuid4().hex

    def publish(self, signature: Signature) -> None:
        queue = signature.routing_key or self.config.default_queue
        self.publish_raw(queue, codec.encode_signature(signature), signature)

    def publish_raw(self, queue: str, body: bytes, signature: Signature | None = None) -> None:
        """Put ``body`` on ``queue`` as it is (the kit uses it for malformed messages)."""
        delay = 0.0
        if signature is not None and signature.eta is not None:
            delay = signature.eta.timestamp() - time.time()
        with self._store.cond:
            self._put(_Message(next(_ids), queue, bytes(body)), delay)

    def _put(self, message: _Message, delay: float) -> None:  # with the store's condition held
        if delay > 0:
            self._store.delayed.append((time.monotonic() + delay, message))
        else:
            self._store.ready.setdefault(message.queue, deque()).append(message)
        self._store.cond.notify_all()

    def _promote(self) -> float:
        """Move due ETAs and expired leases back to their queues; seconds until the next one is due."""
        store, now = self._store, time.monotonic()
        next_due = 3600.0
        for item in sorted(store.delayed, key=lambda d: (d[0], d[1].id)):
            if item[0] <= now:
                store.delayed.remove(item)
                store.ready.setdefault(item[1].queue, deque()).append(item[1])
            else:
                next_due = min(next_due, item[0] - now)
        for message_id, (message, until, _owner) in list(store.leased.items()):
            if until <= now:
                del store.leased[message_id]
                store.ready.setdefault(message.queue, deque()).appendleft(message)
            else:
                next_due = min(next_due, until - now)
        return next_due

    def consume(self, queue: str, max_messages: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        store = self._store
        with store.cond:
            while True:
                next_due = self._promote()
                ready = store.ready.get(queue)
                if ready and max_messages > 0:
                    taken = [ready.popleft() for _ in range(min(max_messages, len(ready)))]
                    until = time.monotonic() + self.lease
                    for message in taken:
                        message.deliveries += 1
                        store.leased[message.id] = (message, until, self.owner)
                    return [ExampleDelivery(self, m) for m in taken]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                store.cond.wait(min(remaining, next_due))

    def pending(self, queue: str) -> list[Signature]:
        with self._store.cond:
            self._promote()
            bodies = [m.body for m in self._store.ready.get(queue, ())]
        return [codec.decode_signature(b) for b in bodies]

    def purge(self, queue: str) -> None:
        with self._store.cond:
            self._store.ready.pop(queue, None)
            self._store.delayed = [d for d in self._store.delayed if d[1].queue != queue]

    def close(self) -> None:
        """Give back what this broker still holds (like a closed connection); idempotent."""
        store = self._store
        with store.cond:
            for message_id, (message, _until, owner) in list(store.leased.items()):
                if owner == self.owner:
                    del store.leased[message_id]
                    store.ready.setdefault(message.queue, deque()).appendleft(message)
            store.cond.notify_all()


# -- result backend --------------------------------------------------------------------------------
class ExampleBackend(BaseBackend):
    """States and groups in a dict; ``wait`` sleeps on a condition the writers notify."""

    capabilities = frozenset({Capability.PUSH_WAIT, Capability.EXPIRY})

    def __init__(self, url: str, config: Config | None = None) -> None:
        super().__init__(config)
        self._store, _ = _parse(url)

    def _live(self, task_uuid: str) -> TaskState | None:
        item = self._store.states.get(task_uuid)
        return item[0] if item is not None and item[1] > time.monotonic() else None

    def set_state(self, state: TaskState) -> None:
        self.set_states([state])

    def set_states(self, states: Sequence[TaskState]) -> None:
        with self._store.cond:
            for state in states:
                merged = state.merged_over(self._live(state.task_uuid))  # keep name and created_at
                merged.created_at = merged.created_at or now_utc()
                self._store.states[state.task_uuid] = (merged, time.monotonic() + self.expires_in)
            self._store.cond.notify_all()

    def get_state(self, task_uuid: str) -> TaskState | None:
        with self._store.cond:
            return self._live(task_uuid)

    def wait(self, task_uuids: Sequence[str], timeout: float) -> dict[str, TaskState]:
        deadline = time.monotonic() + timeout
        with self._store.cond:
            while True:
                done = {u: s for u in task_uuids if (s := self._live(u)) is not None and s.is_completed}
                remaining = deadline - time.monotonic()
                if len(done) == len(set(task_uuids)) or remaining <= 0:
                    return done
                self._store.cond.wait(remaining)

    def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        with self._store.cond:
            meta = GroupMeta(group_uuid, list(task_uuids), created_at=now_utc())
            self._store.groups[group_uuid] = (meta, time.monotonic() + self.expires_in)

    def _group(self, group_uuid: str) -> GroupMeta:
        item = self._store.groups.get(group_uuid)
        if item is None or item[1] <= time.monotonic():
            raise UnknownGroupError(f"group {group_uuid!r} is unknown or expired")
        return item[0]

    def group_states(self, group_uuid: str) -> list[TaskState]:
        with self._store.cond:
            meta = self._group(group_uuid)
            return [self._live(u) or TaskState(u, State.PENDING) for u in meta.task_uuids]

    def trigger_chord(self, group_uuid: str) -> bool:
        with self._store.cond:  # one lock: true exactly once
            meta = self._group(group_uuid)
            if meta.chord_triggered:
                return False
            meta.chord_triggered = True
            return True

    def purge_state(self, task_uuid: str) -> None:
        with self._store.cond:
            self._store.states.pop(task_uuid, None)

    def purge_group(self, group_uuid: str) -> None:
        with self._store.cond:
            self._store.groups.pop(group_uuid, None)


# -- lock ------------------------------------------------------------------------------------------
class ExampleLock:
    """Each object is one owner; an expired key is free again."""

    def __init__(self, url: str, config: Config | None = None) -> None:
        self.config = config or Config()
        self._store, _ = _parse(url)
        self.owner = uuid.uuid4().hex

    def acquire(self, key: str, ttl: float) -> bool:
        now = time.monotonic()
        with self._store.cond:
            holder = self._store.locks.get(key)
            if holder is not None and holder[1] > now:
                return False
            self._store.locks[key] = (self.owner, now + ttl)
            return True

    def release(self, key: str) -> None:
        with self._store.cond:
            holder = self._store.locks.get(key)
            if holder is not None and holder[0] == self.owner:
                del self._store.locks[key]

    def close(self) -> None:
        return None
