"""The events store of ``redis://`` (:class:`machinery.events.SupportsEvents`), mixed into the backend.

- Task events go to one capped stream, ``{machinery:events}:stream`` (``XADD MAXLEN ~ max_events``,
  one field ``e``: the event's JSON), and each event's stream id to its task's index list
  ``{machinery:events}:task:<uuid>``; a batch is one script call (one round trip). A task's history
  reads its ids back from the stream, so an event trimmed from the stream is gone from the history too.
- Heartbeats are fields of the hash ``{machinery:events}:workers`` (the worker's latest JSON) with their
  times in the ZSET ``{machinery:events}:beats``, which drops the expired ones.
- Every key carries the hash tag ``{machinery:events}``: one slot, so the scripts work on a cluster.
  Everything expires ``results_expire_in`` after the last write; older events are trimmed (``MINID``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from machinery.backend import BaseBackend
from machinery.events import TaskEvent, WorkerHeartbeat, event_row_json

from . import scripts

if TYPE_CHECKING:
    from .client import Connection

__all__ = ["BEATS", "STREAM", "WORKERS", "RedisEvents", "task_index"]

TAG = "{machinery:events}"
STREAM = f"{TAG}:stream"
WORKERS = f"{TAG}:workers"
BEATS = f"{TAG}:beats"


def task_index(task_uuid: str) -> str:
    """The list of a task's stream ids."""
    return f"{TAG}:task:{task_uuid}"


def _json(data: object) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


class RedisEvents(BaseBackend):
    """The events half of :class:`~machinery_redis.backend.RedisBackend`."""

    conn: Connection

    def _cutoff(self) -> float:
        return time.time() - self.expires_in

    def record_events(self, events: Sequence[TaskEvent]) -> None:
        self._record([(event.task_uuid, event.to_json()) for event in events])

    def record_event_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """The worker's fast path (:class:`machinery.events.SupportsEventRows`): the same records as
        :meth:`record_events`, without an event object per event. A row's second field is the task uuid."""
        self._record([(row[1], event_row_json(row)) for row in rows])

    def _record(self, events: list[tuple[str, bytes]]) -> None:
        """Store ``(task uuid, event JSON)`` pairs in one script call."""
        if not events:
            return
        keys = [STREAM]
        slots: dict[str, int] = {}  # task uuid -> the position of its index key in KEYS (Lua: 1-based)
        args: list[object] = [
            max(1, int(self.config.events.max_events)),
            self.expires_in,
            int(self._cutoff() * 1000),
        ]
        for task_uuid, body in events:
            slot = slots.get(task_uuid)
            if slot is None:
                keys.append(task_index(task_uuid))
                slot = slots[task_uuid] = len(keys)
            args += (slot, body)
        self._run_one("recording task events", scripts.EVENTS_RECORD.command(keys, args))

    def task_events(self, task_uuid: str) -> list[TaskEvent]:
        raw = self._run_one(
            "reading task events", scripts.EVENTS_OF_TASK.command([STREAM, task_index(task_uuid)])
        )
        cutoff = self._cutoff()
        events = [TaskEvent.from_dict(json.loads(_text(r))) for r in raw]
        return sorted((e for e in events if e.at > cutoff), key=lambda e: e.at)

    def recent_events(self, limit: int = 100) -> list[TaskEvent]:
        if limit <= 0:
            return []
        entries = self._run_one("reading recent events", ("XREVRANGE", STREAM, "+", "-", "COUNT", limit))
        cutoff = self._cutoff()
        events = (TaskEvent.from_dict(json.loads(_text(fields[1]))) for _, fields in entries)
        return [e for e in events if e.at > cutoff]

    def record_heartbeat(self, beat: WorkerHeartbeat) -> None:
        args = [beat.worker, _json(beat.to_dict()), repr(beat.sent_at), repr(self._cutoff()), self.expires_in]
        self._run_one("recording a heartbeat", scripts.EVENTS_HEARTBEAT.command([WORKERS, BEATS], args))

    def workers(self) -> list[WorkerHeartbeat]:
        raw = self._run_one("reading heartbeats", ("HGETALL", WORKERS))
        pairs = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2], strict=True)
        cutoff = self._cutoff()
        beats = [WorkerHeartbeat.from_dict(json.loads(_text(value))) for _, value in pairs]
        return sorted((b for b in beats if b.sent_at > cutoff), key=lambda b: b.worker)

    def _run_one(self, operation: str, command: tuple[object, ...]) -> Any:
        try:
            [reply] = self.conn.run([command])
        except RedisError as exc:
            raise self.conn.error(operation, exc) from None
        if isinstance(reply, BaseException):
            raise self.conn.error(operation, reply)
        return reply
