"""``memcache://`` result backend: Go Machinery's layout, exactly-once chords with CAS, an adaptive poll.

- A task state is Go's ``TaskState`` JSON at the bare task uuid, and a group is Go's ``GroupMeta`` JSON
  at the bare group uuid (Go Machinery's memcache backend reads and writes the same keys), each on the
  server :mod:`~machinery_memcache.client` picks for the key.
- Every write sets the expiry from ``results_expire_in`` (0: 3600 s), made into memcached's form by
  :func:`~machinery_memcache.client.exptime` (relative up to 30 days, a unix time beyond).
- A state without a task name or creation time keeps the stored one's (Go's Redis backend does the
  same; its memcache backend does not). ``set_states`` reads the records to merge with in one
  ``get_many`` and writes the batch in one ``set_many``, per server.
- ``trigger_chord`` flips ``ChordTriggered`` with ``gets``/``cas``: exactly one caller succeeds, across
  threads, processes and hosts. Go Machinery's own memcache backend flips it without CAS (a read, then
  a write, guarded by a ``Lock`` flag that is itself not atomic): while a Go worker has set ``Lock``,
  this backend waits for it to clear as Go does, which narrows the race with Go workers but cannot
  close it; a fleet without Go workers on the same groups is exactly-once. The CAS write also records
  who won (``ChordTriggeredBy``, a field Go ignores), so a writer whose reply was lost to a dropped
  connection finds out on the re-read that it won.
- A group's expiry is pushed forward whenever its states are read while a member still has a state
  (Go #352: a group outliving ``results_expire_in``); with every member's state gone it expires.
- Group completion is read from the members' own keys (one ``get_many`` per server), as Go does; no
  shared counter exists, so concurrent workers cannot lose each other's updates.
- ``wait`` polls (memcached cannot notify): first after ``poll_min`` (2 ms), then each sleep grows by
  half up to ``poll_max`` (250 ms), and drops back to ``poll_min`` when a result arrives.
- Records over the item size limit raise :class:`~machinery_memcache.errors.ValueTooLargeError`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid as uuid_module
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from machinery import codec
from machinery.backend import BaseBackend
from machinery.capabilities import Capability
from machinery.config import Config
from machinery.errors import BackendError, MessageError, UnknownGroupError
from machinery.signature import GroupMeta, State, TaskState, now_utc

from .client import Cluster, check_key, exptime
from .errors import MemcacheConnectionError
from .settings import settings_of
from .url import MemcacheTarget, parse_url

__all__ = ["TRIGGERED_BY", "MemcacheBackend"]

logger = logging.getLogger("machinery.memcache")

#: The extra GroupMeta field naming the trigger_chord call that won (Go's decoder ignores it).
TRIGGERED_BY = "ChordTriggeredBy"
#: Compare-and-set attempts before giving up on a key other writers keep changing.
CAS_ATTEMPTS = 100
#: Times an operation whose outcome a dropped connection hid is read back and tried again.
RECONNECT_ATTEMPTS = 3
#: Factor by which each sleep of ``wait`` grows while nothing arrives.
POLL_GROWTH = 1.5
#: Go's spin interval while a group's Lock flag is set.
GO_LOCK_SPIN = 0.005


class MemcacheBackend(BaseBackend):
    """The memcached result backend. Build it with :meth:`from_url`; it connects on first use."""

    capabilities = frozenset({Capability.EXPIRY, Capability.MULTI_PROCESS})

    def __init__(self, target: MemcacheTarget | str, config: Config | None = None) -> None:
        super().__init__(config)
        if isinstance(target, str):
            target = parse_url(target, settings_of(self.config))
        self.target = target
        self.settings = target.settings
        self.poll_interval = self.settings.poll_max
        self.cluster = Cluster(target)

    @classmethod
    def from_url(cls, url: str, config: Config) -> MemcacheBackend:
        """A backend for ``url`` (see :mod:`machinery_memcache.url`). No I/O."""
        return cls(parse_url(url, settings_of(config)), config)

    def __repr__(self) -> str:
        return f"<MemcacheBackend {self.target.describe()}>"

    @property
    def expire(self) -> int:
        """memcached's expiration for a record written now: 0 (never) when results never expire."""
        return 0 if self.never_expires else exptime(self.expires_in)

    # states ----------------------------------------------------------------------------------
    def _body(self, key: bytes, state: TaskState) -> bytes:
        body = codec.encode_state(state)
        self.cluster.check_size(key, body, f"the {state.state} state of task {state.task_uuid!r}")
        return body

    @staticmethod
    def _complete(state: TaskState) -> bool:
        """True when ``state`` carries everything a merge would keep (so no read is needed)."""
        return bool(state.task_name) and state.created_at is not None

    def set_state(self, state: TaskState) -> None:
        """Store ``state``, keeping the stored task name and creation time when it has none."""
        self.set_states((state,))

    def set_states(self, states: Sequence[TaskState]) -> None:
        """Store ``states`` (in order for each task) in at most two round trips per server: one
        ``get_many`` of the records to merge with, one ``set_many`` of every task's last state.

        A later state of the same task in the batch merges over the earlier one, so the stored record
        is the one the writes in order would leave. Plain ``set`` is enough: the fields a merge keeps
        (task name, creation time) never change during a task's life, and a task's states come in
        order from the one worker running it."""
        if not states:
            return
        keys = [check_key(s.task_uuid, "task uuid") for s in states]
        first: dict[bytes, TaskState] = {}
        for key, state in zip(keys, states, strict=True):
            first.setdefault(key, state)
        # only tasks whose first state here lacks something need the stored record
        unknown = [k for k, s in first.items() if not self._complete(s)]
        stored = self.cluster.get_many("reading task states to merge", unknown) if unknown else {}
        latest: dict[bytes, TaskState] = {}
        for key, state in zip(keys, states, strict=True):
            if not self._complete(state):
                previous = latest.get(key) or self._decode_for_merge(state.task_uuid, stored.get(key))
                state = replace(state).merged_over(previous)
                if state.created_at is None:
                    state.created_at = now_utc()  # a first state stored without one
            latest[key] = state
        bodies = {key: self._body(key, state) for key, state in latest.items()}
        self.cluster.set_many("storing task states", bodies, self.expire)

    @staticmethod
    def _decode_for_merge(uuid: str, raw: bytes | None) -> TaskState | None:
        if raw is None:
            return None
        try:
            return codec.decode_state(raw)
        except MessageError as exc:
            logger.warning("replacing the unreadable state stored for %r: %s", uuid, exc)
            return None

    @staticmethod
    def _decode(uuid: str, raw: bytes | None) -> TaskState | None:
        if raw is None:
            return None
        try:
            return codec.decode_state(raw)
        except MessageError as exc:
            raise BackendError(f"the state stored for {uuid!r} is not a valid TaskState: {exc}") from None

    def get_state(self, task_uuid: str) -> TaskState | None:
        raw = self.cluster.get("reading a task state", check_key(task_uuid, "task uuid"))
        return self._decode(task_uuid, raw)

    def get_states(self, task_uuids: Sequence[str]) -> list[TaskState | None]:
        """Several states (``None`` for unknown ones) in order, one round trip per server."""
        keys = [check_key(u, "task uuid") for u in task_uuids]
        found = self.cluster.get_many("reading task states", keys)
        return [self._decode(u, found.get(k)) for u, k in zip(task_uuids, keys, strict=True)]

    def wait(self, task_uuids: Sequence[str], timeout: float) -> dict[str, TaskState]:
        """Poll until every task is SUCCESS or FAILURE or ``timeout`` passed: sleeps start at
        ``poll_min``, grow by half up to ``poll_max``, and start over when a result arrives. A connection
        error is retried (up to 3 in a row) until the deadline."""
        wanted = list(dict.fromkeys(task_uuids))
        done: dict[str, TaskState] = {}
        deadline = time.monotonic() + max(0.0, timeout)
        sleep = self.settings.poll_min
        failures = 0
        while wanted:
            pending = [u for u in wanted if u not in done]
            try:
                states = self.get_states(pending)
                failures = 0
            except MemcacheConnectionError:
                failures += 1
                if failures > 3 or time.monotonic() >= deadline:
                    raise
                states = []
            arrived = {
                u: s for u, s in zip(pending, states, strict=False) if s is not None and s.is_completed
            }
            done.update(arrived)
            remaining = deadline - time.monotonic()
            if len(done) == len(wanted) or remaining <= 0:
                break
            if arrived:
                sleep = self.settings.poll_min  # results tend to come together (a group's members)
            time.sleep(min(sleep, remaining))
            sleep = min(sleep * POLL_GROWTH, self.settings.poll_max)
        return done

    # groups ----------------------------------------------------------------------------------
    def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        key = check_key(group_uuid, "group uuid")
        body = codec.encode_group_meta(GroupMeta(group_uuid, list(task_uuids), created_at=now_utc()))
        self.cluster.check_size(key, body, f"the record of group {group_uuid!r} ({len(task_uuids)} tasks)")
        self.cluster.set("storing a group", key, body, self.expire)

    def _decode_meta(self, group_uuid: str, raw: bytes) -> GroupMeta:
        try:
            return codec.decode_group_meta(raw)
        except MessageError as exc:
            raise BackendError(
                f"the record of group {group_uuid!r} is not a valid GroupMeta: {exc}"
            ) from None

    def group_meta(self, group_uuid: str) -> GroupMeta:
        """The group's record. Raises UnknownGroupError."""
        raw = self.cluster.get("reading a group", check_key(group_uuid, "group uuid"))
        if raw is None:
            raise UnknownGroupError(f"group {group_uuid!r} is unknown or expired")
        return self._decode_meta(group_uuid, raw)

    def group_states(self, group_uuid: str) -> list[TaskState]:
        """Every member's state in group order (PENDING for members without one).

        While some member has a state (states live ``results_expire_in`` from their last write), the
        group's expiry is pushed forward too, so a group whose tasks run or retry for longer than
        ``results_expire_in`` keeps its record (Go #352); once every member's state is gone, the group
        is left to expire."""
        members = self.group_meta(group_uuid).task_uuids
        found = self.get_states(members)
        if any(s is not None for s in found):
            self.cluster.touch(check_key(group_uuid, "group uuid"), self.expire)
        return [s or TaskState(u, State.PENDING) for u, s in zip(members, found, strict=True)]

    def trigger_chord(self, group_uuid: str) -> bool:
        """True exactly once per group, whoever asks (``ChordTriggered`` flipped by ``gets``/``cas``)."""
        key = check_key(group_uuid, "group uuid")
        token = uuid_module.uuid4().hex
        lock_deadline: float | None = None
        lost_replies = 0
        for _ in range(CAS_ATTEMPTS):
            raw, cas = self.cluster.gets("triggering a chord", key)
            if raw is None or cas is None:
                raise UnknownGroupError(f"group {group_uuid!r} is unknown or expired")
            meta = self._decode_meta(group_uuid, raw)
            if meta.chord_triggered:
                # someone won; it was us only if our own write landed and its reply was lost
                return _triggered_by(raw) == token
            if meta.lock:
                lock_deadline = self._wait_for_go_lock(group_uuid, lock_deadline)
                continue
            meta.chord_triggered = True
            body = _encode_triggered(meta, token)
            try:
                stored = self.cluster.cas("triggering a chord", key, body, cas, self.expire)
            except MemcacheConnectionError:
                lost_replies += 1
                if lost_replies > RECONNECT_ATTEMPTS:
                    raise
                continue  # did the write land? the re-read tells (the winner's token is stored)
            if stored:
                return True
            if stored is None:
                raise UnknownGroupError(f"group {group_uuid!r} expired or was purged while its chord fired")
        raise BackendError(
            f"memcache: chord of group {group_uuid!r}: the group record kept changing "
            f"({CAS_ATTEMPTS} compare-and-set attempts)"
        )

    def _wait_for_go_lock(self, group_uuid: str, deadline: float | None) -> float:
        """Sleep one Go spin interval while a Go worker holds the group's Lock flag."""
        now = time.monotonic()
        if deadline is None:
            deadline = now + self.settings.go_lock_patience
        elif now > deadline:
            raise BackendError(
                f"memcache: chord of group {group_uuid!r}: the group's Lock flag (set by a Go Machinery "
                f"worker) stayed set for {self.settings.go_lock_patience:g} s"
            )
        time.sleep(GO_LOCK_SPIN)
        return deadline

    # purging ---------------------------------------------------------------------------------
    def purge_state(self, task_uuid: str) -> None:
        self.cluster.delete("purging a state", check_key(task_uuid, "task uuid"))

    def purge_group(self, group_uuid: str) -> None:
        self.cluster.delete("purging a group", check_key(group_uuid, "group uuid"))

    def close(self) -> None:
        self.cluster.close()


def _encode_triggered(meta: GroupMeta, token: str) -> bytes:
    record: dict[str, Any] = codec.group_meta_to_dict(meta)
    record[TRIGGERED_BY] = token
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()


def _triggered_by(raw: bytes) -> str:
    try:
        record = json.loads(raw)
    except ValueError:
        return ""
    found = record.get(TRIGGERED_BY, "") if isinstance(record, dict) else ""
    return found if isinstance(found, str) else ""
