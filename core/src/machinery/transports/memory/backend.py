"""``memory://NAME``: a result backend inside one process, with push-based ``wait`` and an events store."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from ...backend import BaseBackend
from ...capabilities import Capability
from ...config import Config
from ...errors import UnknownGroupError
from ...events import TaskEvent, WorkerHeartbeat
from ...signature import GroupMeta, State, TaskState, now_utc
from .events import EventLog
from .store import shared, store_name

__all__ = ["MemoryBackend"]


class _Waiter:
    """One ``wait()`` call: the completed states it has been handed so far."""

    def __init__(self) -> None:
        self.done: dict[str, TaskState] = {}


class _Store:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.states: dict[str, tuple[TaskState, float]] = {}  # uuid -> (state, expires at, monotonic)
        self.groups: dict[str, tuple[GroupMeta, float]] = {}
        self.waiters: dict[str, list[_Waiter]] = {}  # uuid -> waiters to hand its final state to
        self.swept = time.monotonic()  # last sweep of expired states and groups
        self.events = EventLog()


class MemoryBackend(BaseBackend):
    """In-process backend: states, groups, exactly-once chord trigger, expiry, push wait, and the
    events store (:class:`~machinery.events.SupportsEvents`)."""

    capabilities = frozenset({Capability.PUSH_WAIT, Capability.EXPIRY})

    def __init__(self, config: Config | None = None, name: str = "") -> None:
        super().__init__(config)
        self._store = shared("backend", f"memory://{name}", _Store)

    @classmethod
    def from_url(cls, url: str, config: Config) -> MemoryBackend:
        return cls(config, store_name(url))

    def _expiry(self) -> float:
        return self.expires_at(time.monotonic())

    def _live_state(self, task_uuid: str) -> TaskState | None:
        item = self._store.states.get(task_uuid)
        if item is None or item[1] <= time.monotonic():
            return None
        return item[0]

    def set_state(self, state: TaskState) -> None:
        self.set_states([state])

    def _sweep(self) -> None:
        """Drop expired states and groups (they are invisible already; this frees the memory),
        at most once per tenth of the lifetime, so the cost is amortised over many writes."""
        store, now = self._store, time.monotonic()
        if now - store.swept < min(60.0, self.expires_in / 10):
            return
        store.swept = now
        store.states = {k: v for k, v in store.states.items() if v[1] > now}
        store.groups = {k: v for k, v in store.groups.items() if v[1] > now}

    def set_states(self, states: Sequence[TaskState]) -> None:
        store = self._store
        with store.cond:
            self._sweep()
            for state in states:
                merged = state.merged_over(self._live_state(state.task_uuid))
                if merged.created_at is None:
                    merged.created_at = now_utc()
                store.states[state.task_uuid] = (merged, self._expiry())
                if merged.is_completed:
                    for waiter in store.waiters.pop(state.task_uuid, ()):
                        waiter.done[state.task_uuid] = merged
            store.cond.notify_all()

    def get_state(self, task_uuid: str) -> TaskState | None:
        with self._store.cond:
            return self._live_state(task_uuid)

    def wait(self, task_uuids: Sequence[str], timeout: float) -> dict[str, TaskState]:
        """Push-based: each completed state is handed to its waiters as it lands (O(1) per state,
        however many uuids a call waits for)."""
        deadline = time.monotonic() + timeout
        wanted = set(task_uuids)
        waiter = _Waiter()
        store = self._store
        with store.cond:
            for uuid in wanted:
                state = self._live_state(uuid)
                if state is not None and state.is_completed:
                    waiter.done[uuid] = state
                else:
                    store.waiters.setdefault(uuid, []).append(waiter)
            try:
                while len(waiter.done) < len(wanted):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    store.cond.wait(remaining)
            finally:
                for uuid in wanted.difference(waiter.done):
                    waiting = store.waiters.get(uuid)
                    if waiting is not None and waiter in waiting:
                        waiting.remove(waiter)
                        if not waiting:
                            del store.waiters[uuid]
        return dict(waiter.done)

    def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        meta = GroupMeta(group_uuid, list(task_uuids), created_at=now_utc())
        with self._store.cond:
            self._store.groups[group_uuid] = (meta, self._expiry())

    def _group(self, group_uuid: str) -> GroupMeta:
        item = self._store.groups.get(group_uuid)
        if item is None or item[1] <= time.monotonic():
            raise UnknownGroupError(f"group {group_uuid!r} is unknown or expired")
        self._store.groups[group_uuid] = (item[0], self._expiry())  # a running workflow keeps it
        return item[0]

    def group_states(self, group_uuid: str) -> list[TaskState]:
        with self._store.cond:
            meta = self._group(group_uuid)
            return [self._live_state(u) or TaskState(u, State.PENDING) for u in meta.task_uuids]

    def group_meta(self, group_uuid: str) -> GroupMeta:
        """A copy of the group's record (``chord_triggered`` for ``machinery inspect group``)."""
        with self._store.cond:
            meta = self._group(group_uuid)
            return GroupMeta(
                meta.group_uuid, list(meta.task_uuids), meta.chord_triggered, created_at=meta.created_at
            )

    def trigger_chord(self, group_uuid: str) -> bool:
        with self._store.cond:
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

    # events store (machinery.events.SupportsEvents) -------------------------------------------
    def record_heartbeat(self, beat: WorkerHeartbeat) -> None:
        self._store.events.beat(beat, self.expires_in)

    def workers(self) -> list[WorkerHeartbeat]:
        return self._store.events.workers(self.expires_in)

    def record_events(self, events: Sequence[TaskEvent]) -> None:
        self._store.events.add(events, self.config.events.max_events, self.expires_in)

    def task_events(self, task_uuid: str) -> list[TaskEvent]:
        return self._store.events.for_task(task_uuid, self.expires_in)

    def recent_events(self, limit: int = 100) -> list[TaskEvent]:
        return self._store.events.recent(limit, self.expires_in)
