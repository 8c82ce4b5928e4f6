"""The events store of ``redis://`` (:class:`machinery.events.SupportsEvents`), mixed into the backend.

- Task events go to one capped stream, ``{machinery:events}:stream`` (``XADD MAXLEN ~ max_events``,
  one field ``e``: the event's JSON); a batch is one script call (one round trip). A task's history
  reads its ids back from the stream, so an event trimmed from the stream is gone from the history too.
- The ids are indexed by task in buckets: hashes ``{machinery:events}:tasks:<n>`` (task uuid -> its
  ids), a new one once the current one holds :func:`tasks_per_bucket` tasks, listed in the ZSET
  ``{machinery:events}:buckets`` with the newest id in each. A bucket goes once all its ids are
  trimmed from the stream, so the index is bounded like the stream (until 2026-12-06 each task had an
  index key of its own for ``results_expire_in``, whatever the stream kept: 83,000 keys after a few
  20,000-task drains).
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

__all__ = ["BEATS", "BUCKETS", "BUCKET_PREFIX", "STREAM", "WORKERS", "RedisEvents", "tasks_per_bucket"]

TAG = "{machinery:events}"
STREAM = f"{TAG}:stream"
WORKERS = f"{TAG}:workers"
BEATS = f"{TAG}:beats"
#: the index buckets' numbers, each scored by the newest stream id in it (``ms * 4096 + seq``)
BUCKETS = f"{TAG}:buckets"
#: the number of the bucket being filled
CURRENT_BUCKET = f"{TAG}:bucket"
#: a bucket's key is this prefix and its number
BUCKET_PREFIX = f"{TAG}:tasks:"


def tasks_per_bucket(max_events: int) -> int:
    """Tasks indexed per bucket: about 32 buckets span ``max_events`` (a task's history reads each
    live bucket once), never fewer than 100 tasks a bucket."""
    return max(100, max_events // 32)


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
        max_events = max(1, int(self.config.events.max_events))
        args: list[object] = [
            max_events,
            self.expires_in,
            int(self._cutoff() * 1000),
            BUCKET_PREFIX,
            tasks_per_bucket(max_events),
        ]
        for task_uuid, body in events:
            args += (task_uuid, body)
        keys = [STREAM, BUCKETS, CURRENT_BUCKET]
        self._run_one("recording task events", scripts.EVENTS_RECORD.command(keys, args))

    def task_events(self, task_uuid: str) -> list[TaskEvent]:
        command = scripts.EVENTS_OF_TASK.command([STREAM, BUCKETS], [task_uuid, BUCKET_PREFIX])
        raw = self._run_one("reading task events", command)
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
