"""The events store of ``memory://``: a bounded in-process log of task events and the latest heartbeats."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Sequence

from ...events import TaskEvent, WorkerHeartbeat

__all__ = ["EventLog"]


class EventLog:
    """Task events oldest first (with a per-task index) and each worker's latest beat.

    ``max_events`` and ``expires_in`` are passed on every write, as the config may be reloaded.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: deque[TaskEvent] = deque()
        self.by_task: dict[str, deque[TaskEvent]] = {}
        self.beats: dict[str, WorkerHeartbeat] = {}

    def add(self, events: Sequence[TaskEvent], max_events: int, expires_in: float) -> None:
        with self.lock:
            for event in events:
                self.events.append(event)
                self.by_task.setdefault(event.task_uuid, deque()).append(event)
            self._trim(max_events, time.time() - expires_in)

    def _trim(self, max_events: int, cutoff: float) -> None:
        """Drop the oldest events beyond ``max_events`` and those written before ``cutoff``."""
        events = self.events
        while events and (len(events) > max_events or events[0].at <= cutoff):
            self._forget(events.popleft())

    def _forget(self, event: TaskEvent) -> None:
        history = self.by_task.get(event.task_uuid)
        if history is None:
            return
        if history and history[0] is event:
            history.popleft()
        else:  # written out of order by another worker: rare, so a linear removal is fine
            with contextlib.suppress(ValueError):
                history.remove(event)
        if not history:
            del self.by_task[event.task_uuid]

    def for_task(self, task_uuid: str, expires_in: float) -> list[TaskEvent]:
        cutoff = time.time() - expires_in
        with self.lock:
            history = list(self.by_task.get(task_uuid, ()))
        return sorted((e for e in history if e.at > cutoff), key=lambda e: e.at)

    def recent(self, limit: int, expires_in: float) -> list[TaskEvent]:
        cutoff = time.time() - expires_in
        out: list[TaskEvent] = []
        with self.lock:
            for event in reversed(self.events):
                if len(out) >= limit:
                    break
                if event.at > cutoff:
                    out.append(event)
        return out

    def beat(self, beat: WorkerHeartbeat, expires_in: float) -> None:
        with self.lock:
            self.beats[beat.worker] = beat
            cutoff = time.time() - expires_in
            for worker in [w for w, b in self.beats.items() if b.sent_at <= cutoff]:
                del self.beats[worker]

    def workers(self, expires_in: float) -> list[WorkerHeartbeat]:
        cutoff = time.time() - expires_in
        with self.lock:
            beats = [b for b in self.beats.values() if b.sent_at > cutoff]
        return sorted(beats, key=lambda b: b.worker)
