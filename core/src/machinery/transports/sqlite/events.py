"""The events store of ``sqlite://`` (:class:`machinery.events.SupportsEvents`), mixed into the backend.

The events live in their own file next to the database, ``<file>-events`` (same permissions): a
worker's events thread writes about three rows per task, and on the database's file those writes took
turns with the worker's leases and state writes on one write lock (SQLite has one writer per file), which
held up a worker's batches (≈ 20 % of its throughput in bench/threadcpu.py). Files written before keep
their old, empty events tables.

Task events are rows of ``events`` (JSON records); each batch is one transaction that also drops the
rows beyond ``events.max_events`` (ids grow by one per event, so that is one range delete on the
primary key). Heartbeats replace the worker's row in ``heartbeats``. Rows older than
``results_expire_in`` are invisible at once and deleted by the event writes every ``sweep_interval``
seconds (and by the backend's ``sweep()``). Writes use the process's write connection for the file
(store.py), so a worker's events thread, which comes and goes with the worker, opens no connection
of its own.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence

from ...backend import BaseBackend
from ...events import TaskEvent, WorkerHeartbeat
from .store import SQLiteStore

__all__ = ["SQLiteEvents"]

#: a task's events through the index on its uuid's first 8 characters (store.EVENTS_FILE_SCHEMA); the
#: unary ``+`` keeps SQLite from putting the uuid into ``substr(...)``, which would miss the index
_TASK_EVENTS_SQL = (
    "SELECT record FROM events WHERE substr(task_uuid, 1, 8) = substr(?1, 1, 8) AND +task_uuid = ?1 "
    "AND at > ?2 ORDER BY id"
)


class SQLiteEvents(BaseBackend):
    """The events half of :class:`~machinery.transports.sqlite.backend.SQLiteBackend`."""

    #: the events file's store (``store.EVENTS`` layout), set by the backend
    _events: SQLiteStore
    sweep_interval: float
    _next_events_sweep = 0.0

    def record_events(self, events: Sequence[TaskEvent]) -> None:
        if not events:
            return
        rows = [(e.task_uuid, e.at, e.to_json().decode()) for e in events]
        now = time.time()
        with self._events.write("record_events") as conn:
            conn.executemany("INSERT INTO events (task_uuid, at, record) VALUES (?, ?, ?)", rows)
            conn.execute(
                "DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?",
                (max(1, int(self.config.events.max_events)),),
            )
            if now >= self._next_events_sweep:
                self._sweep_events(conn, now)

    def task_events(self, task_uuid: str) -> list[TaskEvent]:
        cursor = self._events.execute(
            "task_events",
            _TASK_EVENTS_SQL,
            (task_uuid, time.time() - self.expires_in),
        )
        return sorted((TaskEvent.from_dict(json.loads(r)) for (r,) in cursor), key=lambda e: e.at)

    def recent_events(self, limit: int = 100) -> list[TaskEvent]:
        cursor = self._events.execute(
            "recent_events",
            "SELECT record FROM events WHERE at > ? ORDER BY id DESC LIMIT ?",
            (time.time() - self.expires_in, max(0, limit)),
        )
        return [TaskEvent.from_dict(json.loads(r)) for (r,) in cursor]

    def record_heartbeat(self, beat: WorkerHeartbeat) -> None:
        self._events.execute_write(
            "record_heartbeat",
            "INSERT OR REPLACE INTO heartbeats (worker, sent_at, record) VALUES (?, ?, ?)",
            (beat.worker, beat.sent_at, json.dumps(beat.to_dict(), separators=(",", ":"))),
        )

    def workers(self) -> list[WorkerHeartbeat]:
        cursor = self._events.execute(
            "workers",
            "SELECT record FROM heartbeats WHERE sent_at > ? ORDER BY worker",
            (time.time() - self.expires_in,),
        )
        return [WorkerHeartbeat.from_dict(json.loads(r)) for (r,) in cursor]

    def sweep_events(self) -> None:
        """Delete expired events and heartbeats now."""
        with self._events.write("sweep events") as conn:
            self._sweep_events(conn, time.time())

    def _sweep_events(self, conn: sqlite3.Connection, now: float) -> None:
        cutoff = now - self.expires_in
        conn.execute("DELETE FROM events WHERE at <= ?", (cutoff,))
        conn.execute("DELETE FROM heartbeats WHERE sent_at <= ?", (cutoff,))
        self._next_events_sweep = now + min(self.sweep_interval, float(self.expires_in))
