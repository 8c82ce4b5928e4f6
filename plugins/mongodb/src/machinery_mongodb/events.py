"""The events store of ``mongodb://`` (:class:`machinery.events.SupportsEvents`), mixed into the backend.

- Task events are documents of ``task_events`` (``task_uuid``, ``at``, ``delete_at``, ``event``: the
  event's fields); a batch is one ``insert_many``. A TTL index on ``delete_at`` removes them
  ``results_expire_in`` after they were written (reads ignore older ones at once).
- Bounded to ``events.max_events``: once the collection holds a tenth more (its estimated count, a
  metadata read), the oldest beyond ``max_events`` are deleted in one ``delete_many``; so it holds at
  most 10 % more for a while.
- Heartbeats are documents of ``worker_heartbeats`` keyed by the worker id (an upsert each), with the
  same TTL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from pymongo import ASCENDING, DESCENDING, InsertOne
from pymongo.collection import Collection

from machinery.backend import BaseBackend
from machinery.events import TaskEvent, WorkerHeartbeat

from .client import HEARTBEATS, TASK_EVENTS, Document

if TYPE_CHECKING:
    from .client import MongoConnection

__all__ = ["TRIM_SLACK", "MongoEvents"]

#: the collection is trimmed back to max_events once it holds this fraction more
TRIM_SLACK = 0.1
_indexed: set[tuple[str, str]] = set()
_indexed_lock = threading.Lock()


class MongoEvents(BaseBackend):
    """The events half of :class:`~machinery_mongodb.backend.MongoBackend`."""

    conn: MongoConnection

    @property
    def task_events_collection(self) -> Collection[Document]:
        collection = self.conn.collection(TASK_EVENTS)
        key = (self.target_key(), TASK_EVENTS)
        if key not in _indexed:
            with _indexed_lock, self.conn.translating("creating the indexes of task_events"):
                collection.create_index([("task_uuid", ASCENDING), ("at", ASCENDING)], name="task_at")
                collection.create_index([("at", DESCENDING)], name="at")
                _indexed.add(key)
        return collection

    def target_key(self) -> str:
        return f"{self.conn.target.describe()}/{self.conn.database_name}"

    def _expiry(self) -> tuple[float, datetime]:
        """(the oldest ``at`` still shown, the ``delete_at`` of a write now)."""
        now = time.time()
        return now - self.expires_in, datetime.now(UTC) + timedelta(seconds=self.expires_in)

    def record_events(self, events: Sequence[TaskEvent]) -> None:
        if not events:
            return
        _, delete_at = self._expiry()
        docs = [
            InsertOne({"task_uuid": e.task_uuid, "at": e.at, "delete_at": delete_at, "event": e.to_dict()})
            for e in events
        ]
        collection = self.task_events_collection
        with self.conn.translating("recording task events"):
            collection.bulk_write(docs, ordered=False)
            self._trim(collection, max(1, int(self.config.events.max_events)))

    @staticmethod
    def _trim(collection: Collection[Document], limit: int) -> None:
        if collection.estimated_document_count() <= limit * (1 + TRIM_SLACK):
            return
        boundary = list(collection.find({}, {"at": 1}).sort("at", DESCENDING).skip(limit).limit(1))
        if boundary:
            collection.delete_many({"at": {"$lte": boundary[0]["at"]}})

    def task_events(self, task_uuid: str) -> list[TaskEvent]:
        cutoff, _ = self._expiry()
        collection = self.task_events_collection
        docs = self.conn.call(
            "reading task events",
            lambda: list(
                collection.find({"task_uuid": task_uuid, "at": {"$gt": cutoff}}).sort("at", ASCENDING)
            ),
        )
        return [TaskEvent.from_dict(d["event"]) for d in docs]

    def recent_events(self, limit: int = 100) -> list[TaskEvent]:
        if limit <= 0:
            return []
        cutoff, _ = self._expiry()
        collection = self.task_events_collection
        docs = self.conn.call(
            "reading recent events",
            lambda: list(collection.find({"at": {"$gt": cutoff}}).sort("at", DESCENDING).limit(limit)),
        )
        return [TaskEvent.from_dict(d["event"]) for d in docs]

    def record_heartbeat(self, beat: WorkerHeartbeat) -> None:
        _, delete_at = self._expiry()
        collection = self.conn.collection(HEARTBEATS)
        doc = {"sent_at": beat.sent_at, "delete_at": delete_at, "beat": beat.to_dict()}
        self.conn.call(
            "recording a heartbeat", lambda: collection.replace_one({"_id": beat.worker}, doc, upsert=True)
        )

    def workers(self) -> list[WorkerHeartbeat]:
        cutoff, _ = self._expiry()
        collection = self.conn.collection(HEARTBEATS)
        docs = self.conn.call(
            "reading heartbeats",
            lambda: list(collection.find({"sent_at": {"$gt": cutoff}}).sort("_id", ASCENDING)),
        )
        return [WorkerHeartbeat.from_dict(d["beat"]) for d in docs]
