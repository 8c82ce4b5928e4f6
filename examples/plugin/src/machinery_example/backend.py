"""``ExampleBackend``: task states and groups in the store; ``wait`` sleeps until a writer wakes it."""

from __future__ import annotations

import time
from collections.abc import Sequence

from machinery.backend import BaseBackend
from machinery.capabilities import Capability
from machinery.config import Config
from machinery.errors import UnknownGroupError
from machinery.signature import GroupMeta, State, TaskState, now_utc

from .store import Store, store_for
from .url import parse_url

__all__ = ["ExampleBackend"]


class ExampleBackend(BaseBackend):
    """States and groups of one ``example://NAME`` store; results expire ``results_expire_in``
    seconds after their last write."""

    capabilities = frozenset({Capability.PUSH_WAIT, Capability.EXPIRY})

    def __init__(self, url: str, config: Config | None = None) -> None:
        super().__init__(config)
        self.store: Store = store_for(parse_url(url, config).name)

    @classmethod
    def from_url(cls, url: str, config: Config) -> ExampleBackend:
        return cls(url, config)

    def _live(self, task_uuid: str) -> TaskState | None:
        item = self.store.states.get(task_uuid)
        return item[0] if item is not None and item[1] > time.monotonic() else None

    def set_state(self, state: TaskState) -> None:
        self.set_states([state])

    def set_states(self, states: Sequence[TaskState]) -> None:
        with self.store.cond:
            for state in states:
                merged = state.merged_over(self._live(state.task_uuid))  # keeps name and created_at
                merged.created_at = merged.created_at or now_utc()
                self.store.states[state.task_uuid] = (merged, self.expires_at(time.monotonic()))
            self.store.cond.notify_all()

    def get_state(self, task_uuid: str) -> TaskState | None:
        with self.store.cond:
            return self._live(task_uuid)

    def wait(self, task_uuids: Sequence[str], timeout: float) -> dict[str, TaskState]:
        deadline = time.monotonic() + timeout
        with self.store.cond:
            while True:
                done = {u: s for u in task_uuids if (s := self._live(u)) is not None and s.is_completed}
                remaining = deadline - time.monotonic()
                if len(done) == len(set(task_uuids)) or remaining <= 0:
                    return done
                self.store.cond.wait(remaining)

    def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        with self.store.cond:
            meta = GroupMeta(group_uuid, list(task_uuids), created_at=now_utc())
            self.store.groups[group_uuid] = (meta, self.expires_at(time.monotonic()))

    def _group(self, group_uuid: str) -> GroupMeta:
        item = self.store.groups.get(group_uuid)
        if item is None or item[1] <= time.monotonic():
            raise UnknownGroupError(f"group {group_uuid!r} is unknown or expired")
        return item[0]

    def group_states(self, group_uuid: str) -> list[TaskState]:
        with self.store.cond:
            meta = self._group(group_uuid)
            return [self._live(u) or TaskState(u, State.PENDING) for u in meta.task_uuids]

    def trigger_chord(self, group_uuid: str) -> bool:
        """True exactly once per group; an unknown group raises UnknownGroupError."""
        with self.store.cond:  # one lock: test-and-set
            meta = self._group(group_uuid)
            if meta.chord_triggered:
                return False
            meta.chord_triggered = True
            return True

    def purge_state(self, task_uuid: str) -> None:
        with self.store.cond:
            self.store.states.pop(task_uuid, None)

    def purge_group(self, group_uuid: str) -> None:
        with self.store.cond:
            self.store.groups.pop(group_uuid, None)
