"""``amqp://`` / ``amqps://`` result backend: Go Machinery's AMQP layout, with its defect fixed.

Layout
------
- **Task state**: a durable queue named by the task uuid, bound to the exchange with the uuid as
  routing key, holding **the latest state as its only message** (``x-max-length: 1``,
  ``x-overflow: drop-head``: publishing a new state drops the old one on the server, atomically).
  The message expires ``results_expire_in`` after it was written (``x-message-ttl``; a requeue keeps
  the original expiry, so readers cannot keep it alive) and the queue that long after its last use
  (``x-expires``). Go declared these queues non-durable and auto-delete; here they are durable with
  persistent messages, so results survive a RabbitMQ restart.
- **Reading does not consume** (Go's ``GetState`` popped the state, so two pollers stole each other's
  results): a reader takes the message with ``basic.get`` (no ack) and gives it straight back with
  ``basic.nack(requeue)``; RabbitMQ puts it back in place. A message followed by a newer one (the
  GetOk ``message_count`` says so) is acked, i.e. dropped. While one reader holds the message, a
  concurrent reader finds the queue empty but existing, and retries for a moment: an existing queue is
  never empty for long. A missing queue (404) means "no state".
- **Group**: a queue named by the group uuid holding the :class:`~machinery.signature.GroupMeta` the
  same way (members in order; written again by ``group_states`` past half its lifetime, so a running
  workflow keeps it); ``<group>_chord_triggered`` holds one token message from ``init_group`` on.
  ``trigger_chord`` takes it with an auto-ack ``basic.get``: RabbitMQ gives a message to exactly one
  getter, so exactly one caller in any process gets ``True``.
- **Waiting** is pushed: each pooled connection has an exclusive *inbox* queue that ``wait`` binds to
  the exchange with the awaited uuids, so every state written for them is copied into it (a direct
  exchange routes to all matching queues); the states written before are read once.

See the README for where this backend is weaker than Redis.
"""

from __future__ import annotations

import logging
import re
import time
import weakref
from collections.abc import Sequence
from typing import Any, Final

import pika.exceptions as pex
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from machinery import codec
from machinery.backend import BaseBackend
from machinery.capabilities import Capability
from machinery.config import Config
from machinery.errors import MessageError, UnknownGroupError
from machinery.signature import GroupMeta, State, TaskState, now_utc

from .connection import MAX_SHORT_STRING, Endpoint, Link, UnroutableError, declare_exchange
from .settings import AMQPSettings

__all__ = ["AMQPBackend"]

logger = logging.getLogger("machinery.amqp")

TOKEN_SUFFIX = "_chord_triggered"
#: How long a reader retries an existing but momentarily empty state queue (another reader holds it).
HELD_WAIT = 2.0
#: How long a writer looks for a previous state its own connection just gave back.
NEW_QUEUE_WAIT = 0.2
_TOKEN = b"chord-token"
#: A character RabbitMQ drops from a queue name: the control characters (one C-level scan).
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def check_uuid(uuid: str, what: str = "task", suffix: str = "") -> None:
    """Refuse a uuid that cannot name its result queue (``uuid + suffix``): empty, over 255 bytes,
    with a control character (RabbitMQ drops those, so the queue it declares is not the one asked
    for, and pika would wait for the reply forever), or in the ``amq.`` names the server reserves."""
    name = uuid + suffix
    problem = ""
    if not uuid:
        problem = "it is empty"
    elif len(name.encode("utf-8", "surrogatepass")) > MAX_SHORT_STRING:
        problem = f"its result queue name would be longer than {MAX_SHORT_STRING} bytes"
    elif _CONTROL.search(uuid):
        problem = "it contains a control character"
    elif uuid.startswith("amq."):
        problem = "RabbitMQ reserves names starting with 'amq.'"
    if problem:
        raise MessageError(
            f"{what} uuid {uuid[:80]!r} cannot name a result queue of the AMQP result backend: {problem}"
        )


class _Inbox:
    """A connection's private queue that receives copies of the states a ``wait`` watches."""

    def __init__(self, channel: BlockingChannel) -> None:
        self.channel = channel
        self.queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue or ""
        self.bound: set[str] = set()
        self.states: dict[str, TaskState] = {}
        channel.basic_consume(self.queue, self._on_message, auto_ack=True)

    def _on_message(self, _ch: BlockingChannel, _m: Basic.Deliver, _p: BasicProperties, body: bytes) -> None:
        try:
            state = codec.decode_state(body)
        except Exception as exc:
            logger.warning("wait: skipped an unreadable state: %s", exc)
            return
        if state.is_completed and state.task_uuid in self.bound:
            self.states[state.task_uuid] = state

    def watch(self, uuids: list[str], exchange: str) -> None:
        wanted = set(uuids)
        for uuid in self.bound - wanted:
            self.channel.queue_unbind(self.queue, exchange, routing_key=uuid)
            self.bound.discard(uuid)
        self.states = {u: s for u, s in self.states.items() if u in wanted}
        for uuid in uuids:
            if uuid not in self.bound:
                self.channel.queue_bind(self.queue, exchange, routing_key=uuid)
                self.bound.add(uuid)

    def take(self, wanted: list[str]) -> dict[str, TaskState]:
        found = {u: self.states.pop(u) for u in wanted if u in self.states}
        return found


def _props() -> BasicProperties:
    return BasicProperties(content_type="application/json", delivery_mode=2, timestamp=int(time.time()))


class AMQPBackend(Endpoint, BaseBackend):
    """RabbitMQ result backend (see the module docs for the layout)."""

    capabilities = frozenset({Capability.PUSH_WAIT, Capability.EXPIRY, Capability.MULTI_PROCESS})

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
        exchange = amqp.exchange or "machinery_exchange"
        # States are routed by uuid through a direct exchange: the broker's exchange when it is direct
        # (Go's layout), a sibling otherwise (a topic/fanout/headers exchange would route states into
        # task queues, and declaring it as direct would clash with its type).
        self.exchange = exchange if (amqp.exchange_type or "direct") == "direct" else f"{exchange}.results"
        self._pool = self._link_pool("backend")
        self._inboxes: weakref.WeakKeyDictionary[Link, _Inbox] = weakref.WeakKeyDictionary()

    @classmethod
    def from_url(cls, url: str, config: Config) -> AMQPBackend:
        """Build from a URL (or failover list) without any I/O."""
        return cls(url, config)

    # queues ------------------------------------------------------------------------------------
    def _args(self, token: bool = False) -> dict[str, Any]:
        """Arguments of a result queue: expires (unused) and its message expires (since written)
        ``results_expire_in`` after; at most one message. The chord token has no message TTL: only
        ``trigger_chord`` may remove it. Results that never expire (-1) get neither expiry."""
        ms = int(self.expires_in * 1000)
        expiry: dict[str, Any] = {} if self.never_expires else {"x-expires": ms}
        if token:
            return {**expiry, "x-max-length": 1}
        if not self.never_expires:
            expiry["x-message-ttl"] = ms
        return {**expiry, "x-max-length": 1, "x-overflow": "drop-head"}

    def _declare(self, link: Link, name: str, *, bind: bool, token: bool = False) -> int:
        """Declare a result queue (renewing its ``x-expires``) and return its ready message count;
        one declared by someone else with other arguments (an older expiry, Go's backend) is replaced."""
        args = self._args(token)
        try:
            ok = link.channel.queue_declare(name, durable=True, arguments=args)
        except pex.ChannelClosedByBroker as exc:
            if exc.reply_code != 406:
                raise
            link.reset_channel()
            logger.info("result queue %s had other arguments (%s); replacing it", name, exc.reply_text)
            kept = None if token else self._read(link, name)[0]  # the token is never read: only taken
            link.channel.queue_delete(name)
            link.declared.discard("b:" + name)
            ok = link.channel.queue_declare(name, durable=True, arguments=args)
            if kept is not None:
                link.channel.basic_publish("", name, kept, _props(), mandatory=True)
                ok = link.channel.queue_declare(name, durable=True, arguments=args)
        if bind and "b:" + name not in link.declared:
            declare_exchange(link, self.exchange, "direct")
            link.channel.queue_bind(name, self.exchange, routing_key=name)
            link.declared.add("b:" + name)
        return int(ok.method.message_count or 0)

    def _read(self, link: Link, name: str, held_wait: float = HELD_WAIT) -> tuple[bytes | None, bool]:
        """``(latest message, queue exists)`` of a last-value queue, leaving the message in place."""
        body, exists, _props = self._read_props(link, name, held_wait)
        return body, exists

    def _read_props(
        self, link: Link, name: str, held_wait: float = HELD_WAIT
    ) -> tuple[bytes | None, bool, BasicProperties | None]:
        channel = link.channel
        deadline = time.monotonic() + held_wait
        pause = 0.002
        while True:
            try:
                method, props, body = channel.basic_get(name, auto_ack=False)
            except pex.ChannelClosedByBroker as exc:
                if exc.reply_code != 404:
                    raise
                link.reset_channel()
                return None, False, None
            if method is None or body is None:
                if time.monotonic() > deadline:
                    return None, True, None  # expired, or declared but never written
                time.sleep(pause)  # another reader holds it for a moment
                pause = min(pause * 2, 0.05)
                continue
            tag = method.delivery_tag or 0
            if method.message_count:
                channel.basic_ack(tag)  # a newer message follows: this one is stale
                continue
            channel.basic_nack(tag, requeue=True)  # back in place, keeping its original expiry
            link.note_requeue(name)
            return body, True, props

    def _publish(
        self, link: Link, name: str, body: bytes, *, via_exchange: bool, token: bool = False
    ) -> None:
        exchange = self.exchange if via_exchange else ""
        try:
            link.channel.basic_publish(exchange, name, body, _props(), mandatory=True)
        except pex.UnroutableError:
            # the queue was deleted (purged, expired) since this connection bound it: declare again
            link.declared.discard("b:" + name)
            self._declare(link, name, bind=via_exchange, token=token)
            try:
                link.channel.basic_publish(exchange, name, body, _props(), mandatory=True)
            except pex.UnroutableError:
                raise UnroutableError(f"result for {name!r} could not be routed to its queue") from None

    # states ------------------------------------------------------------------------------------
    def set_state(self, state: TaskState) -> None:
        self.set_states([state])

    def set_states(self, states: Sequence[TaskState]) -> None:
        if not states:
            return
        for state in states:
            check_uuid(state.task_uuid)

        def fn(link: Link) -> None:
            for state in states:
                count = self._declare(link, state.task_uuid, bind=True)
                if not state.task_name or state.created_at is None:
                    # Keep task_name / created_at of the previous state. A count of 0 means a new queue,
                    # unless this connection just gave its message back (RabbitMQ requeues
                    # asynchronously, so the count may not show it yet): then look a moment longer.
                    if count:
                        wait = HELD_WAIT
                    elif link.requeued_recently(state.task_uuid):
                        wait = NEW_QUEUE_WAIT
                    else:
                        wait = 0.0
                    body, _exists = self._read(link, state.task_uuid, wait) if wait else (None, True)
                    state.merged_over(codec.decode_state(body) if body else None)
                if state.created_at is None:
                    state.created_at = now_utc()
                self._publish(link, state.task_uuid, codec.encode_state(state), via_exchange=True)

        self._pool.run(fn)

    def get_state(self, task_uuid: str) -> TaskState | None:
        check_uuid(task_uuid)

        def fn(link: Link) -> TaskState | None:
            body, _exists = self._read(link, task_uuid)
            return codec.decode_state(body) if body else None

        return self._pool.run(fn)

    def wait(self, task_uuids: Sequence[str], timeout: float) -> dict[str, TaskState]:
        """Block until every task is SUCCESS/FAILURE or ``timeout`` passed; woken by the writes.

        Each pooled connection has an *inbox*: an exclusive queue, consumed all the time, that a wait
        binds to the exchange with the uuids it waits for, so the server copies every state written
        for them into it. Bindings of the previous wait are removed at the start of the next one
        (not on the way out, which would delay the wake-up), and with the connection.
        """
        wanted = list(dict.fromkeys(task_uuids))
        for uuid in wanted:
            check_uuid(uuid)
        deadline = time.monotonic() + max(0.0, timeout)
        done: dict[str, TaskState] = {}

        def fn(link: Link) -> None:
            todo = [u for u in wanted if u not in done]
            if not todo:
                return
            inbox: _Inbox | None = None
            if timeout > 0:
                inbox = self._inbox(link)
                inbox.watch(todo, self.exchange)
            for uuid in todo:  # states written before the bindings existed
                body, _exists = self._read(link, uuid)
                state = codec.decode_state(body) if body else None
                if state is not None and state.is_completed:
                    done[uuid] = state
            if inbox is None:
                return
            while len(done) < len(wanted):
                for uuid, state in inbox.take(wanted).items():
                    done.setdefault(uuid, state)
                remaining = deadline - time.monotonic()
                if len(done) == len(wanted) or remaining <= 0:
                    break
                link.connection.process_data_events(time_limit=min(remaining, 1.0))

        self._pool.run(fn, retry_timeout=timeout)
        return {u: done[u] for u in wanted if u in done}

    def _inbox(self, link: Link) -> _Inbox:
        inbox = self._inboxes.get(link)
        if inbox is None or not inbox.channel.is_open:
            declare_exchange(link, self.exchange, "direct")
            inbox = _Inbox(link.connection.channel())
            self._inboxes[link] = inbox
        return inbox

    # groups ------------------------------------------------------------------------------------
    def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        check_uuid(group_uuid, "group", TOKEN_SUFFIX)
        meta = GroupMeta(group_uuid, list(task_uuids), created_at=now_utc())
        token = group_uuid + TOKEN_SUFFIX

        def fn(link: Link) -> None:
            self._declare(link, token, bind=False, token=True)
            self._publish(link, token, _TOKEN, via_exchange=False, token=True)
            self._declare(link, group_uuid, bind=False)
            self._publish(link, group_uuid, codec.encode_group_meta(meta), via_exchange=False)

        self._pool.run(fn)

    def _meta(self, link: Link, group_uuid: str, *, refresh: bool = False) -> GroupMeta:
        body, _exists, props = self._read_props(link, group_uuid)
        if body is None:
            raise UnknownGroupError(f"group {group_uuid!r} is unknown or expired")
        stamp = props.timestamp if props is not None else None
        # a running workflow keeps its group: past half its lifetime the record is written again
        if refresh and stamp is not None and time.time() - stamp > self.expires_in / 2:
            self._declare(link, group_uuid, bind=False)
            self._publish(link, group_uuid, body, via_exchange=False)
        return codec.decode_group_meta(body)

    def group_states(self, group_uuid: str) -> list[TaskState]:
        check_uuid(group_uuid, "group", TOKEN_SUFFIX)

        def fn(link: Link) -> list[TaskState]:
            meta = self._meta(link, group_uuid, refresh=True)
            try:  # renew the token's x-expires while the group is in use (a declare renews it)
                link.channel.queue_declare(
                    group_uuid + TOKEN_SUFFIX, durable=True, arguments=self._args(True)
                )
            except pex.ChannelClosedByBroker:
                link.reset_channel()
            states = [self._member(link, uuid) for uuid in meta.task_uuids]
            # A read can be stale for a moment when several readers race a write (see the README);
            # near the end of a group, where that would hide the chord's last member, look again.
            for pause in (0.005, 0.02):
                late = [i for i, s in enumerate(states) if not s.is_completed]
                if not late or len(late) > 2:
                    break
                time.sleep(pause)
                for i in late:
                    states[i] = self._member(link, meta.task_uuids[i])
            return states

        return self._pool.run(fn)

    def _member(self, link: Link, uuid: str) -> TaskState:
        body, _exists = self._read(link, uuid)
        return codec.decode_state(body) if body else TaskState(uuid, State.PENDING)

    def trigger_chord(self, group_uuid: str) -> bool:
        """True for exactly one caller: the one whose ``basic.get`` receives the group's token."""
        check_uuid(group_uuid, "group", TOKEN_SUFFIX)

        def fn(link: Link) -> bool:
            try:
                method, _props, _body = link.channel.basic_get(group_uuid + TOKEN_SUFFIX, auto_ack=True)
            except pex.ChannelClosedByBroker as exc:
                if exc.reply_code != 404:
                    raise
                link.reset_channel()
                self._meta(link, group_uuid)  # raises UnknownGroupError for an unknown group
                return False  # the token queue expired after the group's last use
            return method is not None

        return self._pool.run(fn)

    # purging -----------------------------------------------------------------------------------
    def _delete(self, *names: str) -> None:
        def fn(link: Link) -> None:
            for name in names:
                try:
                    link.channel.queue_delete(name)
                except pex.ChannelClosedByBroker as exc:
                    if exc.reply_code != 404:
                        raise
                    link.reset_channel()
                link.declared.discard("b:" + name)

        self._pool.run(fn)

    def purge_state(self, task_uuid: str) -> None:
        self._delete(task_uuid)

    def purge_group(self, group_uuid: str) -> None:
        self._delete(group_uuid, group_uuid + TOKEN_SUFFIX)

    def close(self) -> None:
        self._pool.close()
