"""``redis://`` result backend: Go Machinery's layout, push-based waits, exactly-once chords.

- A task state is Go's ``TaskState`` JSON at the bare task uuid, ``SET <uuid> <json> EX
  results_expire_in`` (the expiry is reset on each write). A state without a task name or creation time
  keeps the previous state's (a Lua script merges them in the same round trip, as Go's backend does
  with a GET and a SET). ``set_states`` writes a batch, in order, with one script call (one
  command per state in one round trip per node on a cluster).
- A group is Go's ``GroupMeta`` JSON at the bare group uuid; ``group_states`` refreshes its expiry, so a
  long-running group does not vanish before its members finish (#352).
- ``wait`` is push-based: the waiter marks ``{uuid}:machinery:waiter`` and reads the state in one round
  trip, then blocks on ``{uuid}:machinery:done``, a list the state script pushes to when a final state
  lands and somebody waits. Results written by Go workers (which do not notify) are picked up by a
  fallback re-read every second at most.
- ``trigger_chord`` flips ``ChordTriggered`` with an atomic compare-and-set in Lua, per group: true
  exactly once. It also respects Go Machinery's global ``TriggerChordMutex`` (redsync): while a Go worker
  holds it, the script declines and is retried, so a mixed Go/Python fleet never fires a chord twice.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid as uuid_module
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

from redis.exceptions import RedisError

from machinery import backoff, codec
from machinery.backend import BaseBackend
from machinery.capabilities import Capability
from machinery.config import Config
from machinery.errors import BackendError, MessageError, UnknownGroupError
from machinery.signature import GroupMeta, State, TaskState, now_utc

from . import scripts
from .client import Connection, outage_errors
from .events import RedisEvents
from .settings import RedisSettings
from .url import RedisTarget, parse_bool, parse_url

__all__ = ["RedisBackend"]

logger = logging.getLogger("machinery.redis")

#: Go Machinery's redsync mutex around TriggerChord (one global name).
GO_CHORD_MUTEX = "TriggerChordMutex"
#: redsync's defaults: the mutex expires after 8 s; Go gives up after 32 tries 50-250 ms apart.
GO_MUTEX_TTL_MS = 8000
GO_MUTEX_PATIENCE = 30.0
#: Seconds a "done" notification list lives (only written while somebody waits).
NOTIFY_TTL = 10
#: Seconds a waiter's mark lives; refreshed on every turn of the wait loop.
WAITER_TTL = 5
#: Longest single block of a wait before the state is read again (Go-written results do not notify).
FALLBACK_POLL = 1.0
_NAME_MARK = b'"TaskName":""'
_CREATED_MARK = b'"CreatedAt":"' + codec.ZERO_TIME.encode() + b'"'
_GROUP_CACHE = 1024


def _no_mutex(group_uuid: str) -> str:
    """A key in the group's slot that never exists (the chord script's mutex when Go's is not used)."""
    return "{" + group_uuid + "}:machinery:no-mutex"


def _chord_result(group_uuid: str, result: Any) -> bool:
    if result == 1:
        return True
    if result == 0:
        return False
    if result == -2:
        raise UnknownGroupError(f"group {group_uuid!r} is unknown or expired")
    raise BackendError(f"the record of group {group_uuid!r} has no ChordTriggered flag")


_CHORD_LOCKS: dict[str, threading.Lock] = {}
_CHORD_LOCKS_LOCK = threading.Lock()


def _chord_lock(where: str) -> threading.Lock:
    with _CHORD_LOCKS_LOCK:
        return _CHORD_LOCKS.setdefault(where, threading.Lock())


def _state_args(state: TaskState) -> tuple[str, bytes, int, int, int]:
    """``state``'s uuid and JSON, the 1-based positions of its empty task name and zero creation time
    (0 when it has them: the script then keeps the stored record's), and the seconds a final state's
    notification lives (0 for a state nobody waits for)."""
    body = codec.encode_state(state)
    name_pos = 0 if state.task_name else body.find(_NAME_MARK) + 1
    created_pos = 0 if state.created_at is not None else body.rfind(_CREATED_MARK) + 1
    final = state.state is State.SUCCESS or state.state is State.FAILURE
    return state.task_uuid, body, name_pos, created_pos, NOTIFY_TTL if final else 0


def done_key(task_uuid: str) -> str:
    return "{" + task_uuid + "}:machinery:done"


def waiter_key(task_uuid: str) -> str:
    return "{" + task_uuid + "}:machinery:waiter"


class RedisBackend(RedisEvents, BaseBackend):
    """The Redis result backend, with the events store (:mod:`machinery_redis.events`). Build it with
    :meth:`from_url`; it connects on first use."""

    capabilities = frozenset({Capability.PUSH_WAIT, Capability.EXPIRY, Capability.MULTI_PROCESS})

    def __init__(
        self,
        target: RedisTarget | str,
        config: Config | None = None,
        *,
        go_compatible_chords: bool | None = None,
    ) -> None:
        super().__init__(config)
        self.target = parse_url(target) if isinstance(target, str) else target
        if go_compatible_chords is None:
            text = self.target.options.get("go_compatible_chords")
            if text is not None:
                go_compatible_chords = parse_bool(text, "go_compatible_chords")
            else:
                go_compatible_chords = RedisSettings.of(self.config).go_compatible_chords
        #: Respect Go Machinery's ``TriggerChordMutex`` (on by default: one EXISTS inside the script).
        self.go_compatible_chords = go_compatible_chords
        self.conn = Connection(self.target, self.config, BackendError)
        self._groups: OrderedDict[str, list[str]] = OrderedDict()
        self._groups_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, config: Config, **options: Any) -> RedisBackend:
        """A backend for ``url`` (see :mod:`machinery_redis.url`). No I/O."""
        return cls(parse_url(url), config, **options)

    def __repr__(self) -> str:
        return f"<RedisBackend {self.target.describe()}>"

    def _check_uuids(self, uuids: Iterable[str], what: str = "task") -> None:
        """On Redis Cluster, refuse a uuid with ``{`` or ``}``: the cluster reads a brace pair as a hash
        tag, so the uuid's own key and the keys built beside it (``{uuid}:machinery:...``) would land in
        different slots, and every script over them would fail (MessageError: retrying cannot help)."""
        if not self.conn.cluster:
            return
        for uuid in uuids:
            if "{" in uuid or "}" in uuid:
                raise MessageError(
                    f"{what} uuid {uuid!r} cannot be used with a Redis Cluster result backend: it contains "
                    "a brace, which Redis Cluster reads as a hash tag (its keys would be in different "
                    "slots); use a uuid without '{' and '}'"
                )

    @property
    def _ttl(self) -> int:
        """``EX`` seconds of results and groups; 0 when they never expire (no TTL at all)."""
        return 0 if self.never_expires else self.expires_in

    # states ----------------------------------------------------------------------------------
    def state_commands(self, states: Sequence[TaskState]) -> list[tuple[Any, ...]]:
        """The commands storing ``states`` in order (the broker sends them with a publish). A state
        that needs no merge and wakes nobody (a PENDING state) is a plain ``SET``; consecutive states
        that need the script share one call on a single server, and have one each on a cluster (the
        keys of different states are in different slots)."""
        self._check_uuids(state.task_uuid for state in states)
        ttl = self._ttl
        # the creation time a first state without one gets (PENDING states carry theirs)
        fallback = b"" if all(s.created_at for s in states) else codec.format_time(now_utc()).encode()
        commands: list[tuple[Any, ...]] = []
        keys: list[str] = []
        args: list[Any] = []

        def close_script_call() -> None:
            if keys:
                commands.append(scripts.SET_STATES.command(keys, [fallback, ttl, *args]))
                keys.clear()
                args.clear()

        for state in states:
            uuid, body, name_pos, created_pos, notify = _state_args(state)
            if name_pos or created_pos or notify:
                keys.extend((uuid, done_key(uuid), waiter_key(uuid)))
                args.extend((body, name_pos, created_pos, notify))
                if self.conn.cluster:
                    close_script_call()
            else:
                close_script_call()
                commands.append(("SET", uuid, body, "EX", ttl) if ttl else ("SET", uuid, body))
        close_script_call()
        return commands

    def set_state(self, state: TaskState) -> None:
        self.set_states((state,))

    def set_states(self, states: Sequence[TaskState]) -> None:
        """Store every state in one round trip, in order."""
        if not states:
            return
        commands = self.state_commands(states)
        try:
            replies = self.conn.run(commands)
        except RedisError as exc:
            raise self.conn.error("storing task states", exc) from None
        for reply in replies:
            if isinstance(reply, BaseException):
                raise self.conn.error("storing task states", reply)

    def _decode_state(self, uuid: str, raw: bytes | None) -> TaskState | None:
        if raw is None:
            return None
        try:
            return codec.decode_state(raw)
        except MessageError as exc:
            raise BackendError(f"the state stored for {uuid!r} is not a valid TaskState: {exc}") from None

    def get_state(self, task_uuid: str) -> TaskState | None:
        raw = self.conn.call("reading a task state", lambda: self.conn.client.get(task_uuid))
        return self._decode_state(task_uuid, raw)

    def _reads(self, uuids: Sequence[str]) -> list[tuple[Any, ...]]:
        """The commands reading ``uuids``: one ``MGET``, or on a cluster one ``GET`` each (the keys are
        in different slots; :meth:`Connection.run` sends them in one round trip per node)."""
        if not uuids:
            return []
        if self.conn.cluster:
            return [("GET", uuid) for uuid in uuids]
        return [("MGET", *uuids)]

    def _read_replies(self, replies: Sequence[Any]) -> list[Any]:
        """The raw states out of the replies of :meth:`_reads` commands."""
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        if self.conn.cluster:
            return list(replies)
        return list(replies[0]) if replies else []

    def _run(self, operation: str, commands: list[tuple[Any, ...]]) -> list[Any]:
        try:
            return self.conn.run(commands)
        except RedisError as exc:
            raise self.conn.error(operation, exc) from None

    def get_states(self, task_uuids: Sequence[str]) -> list[TaskState | None]:
        """Several states in one round trip (``None`` for unknown ones), in order."""
        if not task_uuids:
            return []
        replies = self._run("reading task states", self._reads(task_uuids))
        raws = self.conn.call("reading task states", lambda: self._read_replies(replies))
        return [self._decode_state(u, r) for u, r in zip(task_uuids, raws, strict=True)]

    def wait(self, task_uuids: Sequence[str], timeout: float) -> dict[str, TaskState]:
        """Block until every task is SUCCESS or FAILURE or ``timeout`` passed; wakes as soon as a Python
        worker stores the final state (push), within a second for a Go worker's."""
        wanted = list(dict.fromkeys(task_uuids))
        done: dict[str, TaskState] = {}
        if not wanted:
            return done
        self._check_uuids(wanted)
        deadline = time.monotonic() + max(0.0, timeout)
        marked_at = -1e9  # when the waiter marks were last set (they live WAITER_TTL seconds)
        stale = False
        failures = 0
        while True:
            pending = [u for u in wanted if u not in done]
            if len(pending) == 1 and not stale and time.monotonic() - marked_at > WAITER_TTL / 2:
                # one task (AsyncResult.get): mark, read and block in one round trip
                try:
                    state, pushed = self._mark_read_and_block(pending[0], deadline)
                except RedisError as exc:
                    if not isinstance(exc, outage_errors):
                        raise self.conn.error("waiting for a result", exc) from None
                    self.conn.health.failed(exc)
                    failures += 1
                    if failures > 3 or deadline - time.monotonic() <= 0:
                        raise self.conn.error("waiting for a result", exc) from None
                    time.sleep(min(0.25 * failures, max(0.0, deadline - time.monotonic())))
                    continue
                failures = 0
                marked_at = time.monotonic()
                if state is not None and state.is_completed:
                    done[pending[0]] = state
                elif pushed is not None:
                    stale = self._take_pushed(pending[0], pushed, done)
                elif deadline - time.monotonic() > 0:
                    marked_at = -1e9  # a quiet slice (e.g. a Go worker's result, not pushed): read again
                if deadline - time.monotonic() <= 0 or pending[0] in done:
                    return done
                continue
            if time.monotonic() - marked_at > WAITER_TTL / 2:
                try:
                    found = self._mark_and_read(pending)
                    failures = 0
                except BackendError:
                    failures += 1
                    if failures > 3 or deadline - time.monotonic() <= 0:
                        raise
                    time.sleep(min(0.25 * failures, max(0.0, deadline - time.monotonic())))
                    continue
                marked_at = time.monotonic()
                for uuid, state in zip(pending, found, strict=True):
                    if state is not None and state.is_completed:
                        done[uuid] = state
                pending = [u for u in wanted if u not in done]
            remaining = deadline - time.monotonic()
            if not pending or remaining <= 0:
                return done
            block = min(remaining, FALLBACK_POLL)
            if stale:
                time.sleep(min(block, 0.1))  # an unreadable notification: do not spin on it
                stale = False
                marked_at = -1e9
                continue
            uuid = pending[0]
            key = done_key(uuid)
            try:
                pushed = self.conn.blocking.blmove(key, key, self.conn.max_block(block), "LEFT", "RIGHT")
            except RedisError as exc:
                if not isinstance(exc, outage_errors):
                    raise self.conn.error("waiting for a result", exc) from None
                self.conn.health.failed(exc)
                time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
                marked_at = -1e9
                continue
            if pushed is None:
                marked_at = -1e9  # a quiet slice (e.g. a Go worker's result, not pushed): read again
                continue
            stale = self._take_pushed(uuid, pushed, done)

    @staticmethod
    def _take_pushed(uuid: str, pushed: bytes, done: dict[str, TaskState]) -> bool:
        """Record the final state a done list held (the notification is the state itself: no read
        needed); True when it was unreadable or not final (a stale notification)."""
        try:
            state = codec.decode_state(pushed)
        except MessageError:
            return True
        if not state.is_completed:
            return True
        done[uuid] = state
        return False

    def _mark_read_and_block(self, uuid: str, deadline: float) -> tuple[TaskState | None, bytes | None]:
        """Mark the waiter, read the state and block on the done list, in one round trip: the script
        pushes a state already final onto the done list, so the block then returns at once. Returns the
        state read and what the block returned (None after a quiet slice)."""
        block = self.conn.max_block(max(0.001, min(deadline - time.monotonic(), FALLBACK_POLL)))
        key = done_key(uuid)
        mark = scripts.WAIT_MARK.command([uuid, key, waiter_key(uuid)], [WAITER_TTL, NOTIFY_TTL])
        raw, pushed = self.conn.run([mark, ("BLMOVE", key, key, "LEFT", "RIGHT", block)], blocking=True)
        for reply in (raw, pushed):
            if isinstance(reply, BaseException):
                raise reply
        return self._decode_state(uuid, raw), pushed

    def _mark_and_read(self, uuids: list[str]) -> list[TaskState | None]:
        marks: list[tuple[Any, ...]] = [("SET", waiter_key(uuid), b"1", "EX", WAITER_TTL) for uuid in uuids]
        replies = self._run("waiting for a result", [*marks, *self._reads(uuids)])
        raws = self.conn.call("waiting for a result", lambda: self._read_replies(replies[len(marks) :]))
        return [self._decode_state(u, r) for u, r in zip(uuids, raws, strict=True)]

    # groups ----------------------------------------------------------------------------------
    def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        self._check_uuids([group_uuid], "group")
        meta = GroupMeta(group_uuid, list(task_uuids), created_at=now_utc())
        body = codec.encode_group_meta(meta)
        ex = self._ttl or None
        self.conn.call("storing a group", lambda: self.conn.client.set(group_uuid, body, ex=ex))
        self._remember(group_uuid, list(task_uuids))

    def _remember(self, group_uuid: str, task_uuids: list[str]) -> None:
        with self._groups_lock:
            self._groups[group_uuid] = task_uuids
            self._groups.move_to_end(group_uuid)
            while len(self._groups) > _GROUP_CACHE:
                self._groups.popitem(last=False)

    def group_meta(self, group_uuid: str) -> GroupMeta:
        """The group's record (refreshing its expiry). Raises UnknownGroupError."""
        ttl = self._ttl

        def read() -> Any:  # the client may be a new one on a retry
            client = self.conn.client
            return client.getex(group_uuid, ex=ttl) if ttl else client.getex(group_uuid, persist=True)

        raw = self.conn.call("reading a group", read)
        if raw is None:
            raise UnknownGroupError(f"group {group_uuid!r} is unknown or expired")
        try:
            meta = codec.decode_group_meta(raw)
        except MessageError as exc:
            raise BackendError(
                f"the record of group {group_uuid!r} is not a valid GroupMeta: {exc}"
            ) from None
        self._remember(group_uuid, list(meta.task_uuids))
        return meta

    def group_states(self, group_uuid: str) -> list[TaskState]:
        """Every member's state in group order (PENDING for members without one), refreshing the group's
        expiry. One round trip when this process knows the members (it sent the group or read it)."""
        with self._groups_lock:
            members = self._groups.get(group_uuid)
        if members is None:
            members = self.group_meta(group_uuid).task_uuids
            found = self.get_states(members)
        else:
            uuids = members
            ttl = self._ttl
            # EXPIRE says whether the group exists; never expiring, PERSIST does not (0 without a TTL)
            refresh: list[tuple[Any, ...]] = (
                [("EXPIRE", group_uuid, ttl)] if ttl else [("PERSIST", group_uuid), ("EXISTS", group_uuid)]
            )
            replies = self._run("reading group states", [*refresh, *self._reads(uuids)])
            exists, replies = replies[len(refresh) - 1], replies[len(refresh) :]
            if isinstance(exists, BaseException):
                raise self.conn.error("reading group states", exists)
            if not exists:
                with self._groups_lock:
                    self._groups.pop(group_uuid, None)
                raise UnknownGroupError(f"group {group_uuid!r} is unknown or expired")
            raws = self.conn.call("reading group states", lambda: self._read_replies(replies))
            found = [self._decode_state(u, r) for u, r in zip(uuids, raws, strict=True)]
        return [s or TaskState(u, State.PENDING) for u, s in zip(members, found, strict=True)]

    def trigger_chord(self, group_uuid: str) -> bool:
        """True exactly once per group, whoever asks (atomic compare-and-set of ``ChordTriggered``)."""
        self._check_uuids([group_uuid], "group")
        if self.conn.cluster and self.go_compatible_chords:
            return self._trigger_chord_holding_go_mutex(group_uuid)
        mutex = GO_CHORD_MUTEX if self.go_compatible_chords else _no_mutex(group_uuid)
        for attempt in range(64):
            result = self.conn.call(
                "triggering a chord",
                lambda: scripts.TRIGGER_CHORD(self.conn.client, [group_uuid, mutex], [self._ttl]),
            )
            if result != -1:
                return _chord_result(group_uuid, result)
            # -1: a Go worker holds TriggerChordMutex; redsync retries 50-250 ms apart, so do we
            time.sleep(random.uniform(0.05, 0.25) if attempt else 0.05)
        raise BackendError(
            f"chord of group {group_uuid!r}: Go Machinery's {GO_CHORD_MUTEX} stayed held for too long"
        )

    def _trigger_chord_holding_go_mutex(self, group_uuid: str) -> bool:
        """Redis Cluster: Go's global ``TriggerChordMutex`` is in another slot than the group, so the
        script cannot look at it; take it as Go's redsync does (``SET NX PX 8000`` with a random token,
        compare-and-delete), and run the compare-and-set while holding it. The threads of a process queue
        on a local lock rather than on Redis; other processes (Go's too) retry with back-off."""
        token = uuid_module.uuid4().hex.encode()
        deadline = time.monotonic() + GO_MUTEX_PATIENCE
        attempt = 0
        with _chord_lock(self.target.describe()):
            while True:
                taken = self.conn.call(
                    "taking Go's chord mutex",
                    lambda: self.conn.client.set(GO_CHORD_MUTEX, token, nx=True, px=GO_MUTEX_TTL_MS),
                )
                if taken:
                    break
                attempt += 1
                if time.monotonic() > deadline:
                    raise BackendError(
                        f"chord of group {group_uuid!r}: Go Machinery's {GO_CHORD_MUTEX} stayed held for "
                        f"{GO_MUTEX_PATIENCE:g} s"
                    )
                time.sleep(backoff.delay(attempt + 1, 0.001, 0.25, jitter=0.5))
            try:
                result = self.conn.call(
                    "triggering a chord",
                    lambda: scripts.TRIGGER_CHORD(
                        self.conn.client, [group_uuid, _no_mutex(group_uuid)], [self._ttl]
                    ),
                )
            finally:
                try:
                    self.conn.call(
                        "releasing Go's chord mutex",
                        lambda: scripts.RELEASE_LOCK(self.conn.client, [GO_CHORD_MUTEX], [token]),
                    )
                except BackendError as exc:  # it expires by itself within 8 s
                    logger.warning("%s", exc)
        return _chord_result(group_uuid, result)

    # purging ---------------------------------------------------------------------------------
    def purge_state(self, task_uuid: str) -> None:
        self.conn.call(
            "purging a state",
            lambda: self.conn.client.delete(task_uuid, done_key(task_uuid), waiter_key(task_uuid)),
        )

    def purge_group(self, group_uuid: str) -> None:
        with self._groups_lock:
            self._groups.pop(group_uuid, None)
        self.conn.call("purging a group", lambda: self.conn.client.delete(group_uuid))

    def close(self) -> None:
        self.conn.close()
