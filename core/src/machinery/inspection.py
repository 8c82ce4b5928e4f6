"""What ``machinery inspect workers | task | group`` (and the dashboard) show, as data.

Reads the result backend and its events store (:mod:`machinery.events`); formatting is the caller's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .backend import Backend
from .events import TaskEvent, WorkerHeartbeat, events_store
from .signature import State, TaskState

__all__ = ["GroupProgress", "TaskHistory", "group_progress", "task_history", "worker_rows"]


def worker_rows(beats: list[WorkerHeartbeat], now: float | None = None) -> list[dict[str, Any]]:
    """Each beat as a dict plus ``status`` (``live``; ``lost``: missed three heartbeats; ``stopped``:
    stopped cleanly) and ``seen_ago`` (seconds since its last heartbeat); live, lost, then stopped."""
    now = time.time() if now is None else now
    rows = [{**b.to_dict(), "status": _status(b, now), "seen_ago": max(0.0, now - b.sent_at)} for b in beats]
    order = {"live": 0, "lost": 1, "stopped": 2}
    return sorted(rows, key=lambda r: (order[r["status"]], r["worker"]))


def _status(beat: WorkerHeartbeat, now: float) -> str:
    return "stopped" if beat.stopped else "lost" if beat.lost(now) else "live"


@dataclass
class TaskHistory:
    """A task's current state (None when the backend has none) and its events, oldest first.
    ``events_kept`` is False when the backend keeps no events."""

    task_uuid: str
    state: TaskState | None
    events: list[TaskEvent] = field(default_factory=list)
    events_kept: bool = True

    @property
    def known(self) -> bool:
        return self.state is not None or bool(self.events)


def task_history(backend: Backend, task_uuid: str) -> TaskHistory:
    """What the backend knows about one task."""
    store = events_store(backend)
    events = store.task_events(task_uuid) if store is not None else []
    return TaskHistory(task_uuid, backend.get_state(task_uuid), events, store is not None)


@dataclass
class GroupProgress:
    """A group's members and how far they are; ``chord_triggered`` is None when the backend cannot tell."""

    group_uuid: str
    members: list[TaskState]
    chord_triggered: bool | None

    @property
    def total(self) -> int:
        return len(self.members)

    @property
    def done(self) -> int:
        return sum(s.is_completed for s in self.members)

    @property
    def succeeded(self) -> int:
        return sum(s.state == State.SUCCESS for s in self.members)

    @property
    def failed(self) -> int:
        return sum(s.state == State.FAILURE for s in self.members)


def group_progress(backend: Backend, group_uuid: str) -> GroupProgress:
    """The group's progress. Raises :class:`~machinery.errors.UnknownGroupError` for an unknown group."""
    members = backend.group_states(group_uuid)
    meta_of = getattr(backend, "group_meta", None)
    triggered = bool(meta_of(group_uuid).chord_triggered) if callable(meta_of) else None
    return GroupProgress(group_uuid, members, triggered)
