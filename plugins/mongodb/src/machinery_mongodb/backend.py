"""``mongodb://`` result backend: Go Machinery's collections, real expiry, exactly-once chords.

- **States** live in ``tasks`` (``_id`` = task uuid, see :mod:`machinery_mongodb.documents`). Each
  write is an upsert that replaces the state, results and error and keeps the task name and creation
  time when the new state has none; ``set_states`` sends a batch as one ordered ``bulk_write``.
- **Expiry**: every write sets ``delete_at`` = now + ``results_expire_in`` (0 means 3600 s, as
  everywhere in Machinery), and a TTL index removes the document at the server's next sweep (every
  60 s on MongoDB). Reads ignore a document whose ``delete_at`` has passed, so a result is gone for
  Machinery at its expiry even before the sweep. Go v1 put its TTL index on non-date fields (nothing
  expired) and v2 let 0 mean "at the next sweep"; neither is copied. ``results_expire_in = -1``
  (``NEVER_EXPIRE``): no ``delete_at`` is written (an existing one is removed), so nothing expires.
- **Groups** live in ``group_metas`` in member order; ``group_states`` refreshes the group's
  ``delete_at`` so a long-running group does not vanish under its members (Go's #352).
- **Chords**: ``trigger_chord`` is one ``find_one_and_update`` from ``chord_triggered: false`` to true:
  the server applies it to the document once, so exactly one caller sees the old ``false``
  (Go's version answered true every time).
- **Waiting**: ``wait()`` follows a change stream on ``tasks`` where the server has them (replica sets
  and sharded clusters) and wakes when the state lands; on a standalone server it polls, from 2 ms
  up to 200 ms between looks (x1.3 each time), one query for all the awaited uuids. The URL option
  ``wait=poll`` / ``wait=change_stream`` forces one way (``change_stream`` also declares ``push_wait``).
- **Events** (worker heartbeats, task events: :mod:`machinery.events`) live in ``task_events`` and
  ``worker_heartbeats``, see :mod:`machinery_mongodb.events`.
- **Size**: MongoDB stores at most 16 MiB per document. A state over it raises
  :class:`ResultTooLargeError` naming the task and the size (retrying cannot help).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
from pymongo import ReturnDocument, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DocumentTooLarge, OperationFailure, PyMongoError

from machinery.backend import BaseBackend
from machinery.capabilities import Capability
from machinery.config import Config
from machinery.errors import BackendError, MessageError, UnknownGroupError
from machinery.signature import State, TaskState

from .client import GROUP_METAS, TASKS, Document, MongoConnection, MongoUnavailableError
from .documents import COMPLETED, state_from_document, state_update
from .events import MongoEvents
from .url import MongoTarget, parse_url

__all__ = ["MAX_DOCUMENT_BYTES", "MongoBackend", "ResultTooLargeError"]

logger = logging.getLogger("machinery.mongodb")

#: MongoDB's limit on one stored document.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
#: Server error codes meaning "this document is too large".
TOO_LARGE_CODES = frozenset({10334, 17419, 17420})
#: "$changeStream is only supported on replica sets" (standalone servers).
NO_CHANGE_STREAMS = 40573
#: Bounds of the adaptive poll on servers without change streams (seconds), and its growth per look:
#: quick looks while a task is likely about to finish, then at most 5 queries a second per waiter.
POLL_MIN, POLL_MAX, POLL_GROWTH = 0.002, 0.2, 1.3
#: Longest single wait for a change before the deadline is looked at again (seconds).
CHANGE_SLICE = 0.25
#: Transient errors a wait() rides out (e.g. a server restart) before raising.
WAIT_RETRIES = 4


class ResultTooLargeError(MessageError):
    """A task state does not fit in one MongoDB document (16 MiB). Retrying cannot help: the task's
    result must shrink. ``task_uuids`` names the states concerned.

    A permanent error, deliberately not a :class:`BackendError` (which callers retry as transient).
    Its base becomes the core's ``PermanentError`` once plugin platform II adds it."""

    def __init__(self, message: str, task_uuids: Sequence[str]) -> None:
        super().__init__(message)
        self.task_uuids = list(task_uuids)


def _now() -> datetime:
    return datetime.now(UTC)


def _alive(doc: Mapping[str, Any] | None, now: datetime) -> bool:
    if doc is None:
        return False
    delete_at = doc.get("delete_at")
    return not isinstance(delete_at, datetime) or delete_at > now


def _not_before(now: datetime) -> Document:
    """Matches a ``delete_at`` after ``now``, or none at all (records written by Go Machinery)."""
    return {"$not": {"$lte": now}}


class MongoBackend(MongoEvents, BaseBackend):
    """The MongoDB result backend, with the events store (:mod:`machinery_mongodb.events`). Build it
    with :meth:`from_url`; it connects on first use."""

    capabilities = frozenset({Capability.EXPIRY, Capability.MULTI_PROCESS})
    poll_interval = POLL_MAX

    def __init__(self, target: MongoTarget | str, config: Config | None = None) -> None:
        super().__init__(config)
        self.target = parse_url(target) if isinstance(target, str) else target
        self.conn = MongoConnection(self.target, self.config)
        if self.target.wait == "change_stream":
            self.capabilities = self.capabilities | {Capability.PUSH_WAIT}
        #: None until the server was asked; then whether it has change streams
        self.change_streams: bool | None = {"auto": None, "poll": False}.get(self.target.wait, True)

    @classmethod
    def from_url(cls, url: str, config: Config) -> MongoBackend:
        """A backend for ``url`` (see :mod:`machinery_mongodb.url`). No I/O."""
        return cls(parse_url(url), config)

    def __repr__(self) -> str:
        return f"<MongoBackend {self.target.describe()} db={self.conn.database_name}>"

    @property
    def tasks(self) -> Collection[Document]:
        return self.conn.collection(TASKS)

    @property
    def groups(self) -> Collection[Document]:
        return self.conn.collection(GROUP_METAS)

    def _delete_at(self, now: datetime) -> datetime | None:
        """``delete_at`` of a document written at ``now``; None when results never expire."""
        return None if self.never_expires else now + timedelta(seconds=self.expires_in)

    def _expiry_update(self, now: datetime) -> Document:
        """Push ``delete_at`` forward, or remove it when results never expire (no TTL sweep)."""
        delete_at = self._delete_at(now)
        return {"$unset": {"delete_at": ""}} if delete_at is None else {"$set": {"delete_at": delete_at}}

    # states ----------------------------------------------------------------------------------
    def set_state(self, state: TaskState) -> None:
        self.set_states((state,))

    def set_states(self, states: Sequence[TaskState]) -> None:
        """Store every state in one ordered round trip (upserts: safe to repeat after a lost
        connection)."""
        if not states:
            return
        now = _now()
        delete_at = self._delete_at(now)
        updates = [state_update(s, now, delete_at) for s in states]
        operations = [
            UpdateOne({"_id": s.task_uuid}, u, upsert=True) for s, u in zip(states, updates, strict=True)
        ]

        def write() -> None:
            try:
                self.tasks.bulk_write(operations, ordered=True)
            except DocumentTooLarge:
                raise self._too_large(states, updates) from None
            except BulkWriteError as exc:
                codes = {e.get("code") for e in exc.details.get("writeErrors", [])}
                if codes & TOO_LARGE_CODES:
                    raise self._too_large(states, updates) from None
                raise

        self.conn.call("storing task states", write)

    def _too_large(self, states: Sequence[TaskState], updates: Sequence[Document]) -> ResultTooLargeError:
        sizes = [(len(bson.encode(u["$set"])), s) for s, u in zip(states, updates, strict=True)]
        big = [(size, s) for size, s in sizes if size > MAX_DOCUMENT_BYTES - 1024] or [
            max(sizes, key=lambda x: x[0])
        ]
        size, first = big[0]
        name = f" ({first.task_name})" if first.task_name else ""
        return ResultTooLargeError(
            f"the {first.state.value} state of task {first.task_uuid!r}{name} is {size / 2**20:.1f} MiB as a "
            f"MongoDB document; MongoDB at {self.target.describe()} stores at most 16 MiB "
            f"({MAX_DOCUMENT_BYTES} bytes) per document: return less data (e.g. store it elsewhere and "
            "return a reference)",
            [s.task_uuid for _, s in big],
        )

    def _decode(self, doc: Mapping[str, Any]) -> TaskState:
        try:
            return state_from_document(doc)
        except MessageError as exc:
            raise BackendError(
                f"the state stored for {doc.get('_id')!r} in {self.target.describe()} is not a valid "
                f"task state: {exc}"
            ) from None

    def get_state(self, task_uuid: str) -> TaskState | None:
        doc = self.conn.call("reading a task state", lambda: self.tasks.find_one({"_id": task_uuid}))
        return self._decode(doc) if doc is not None and _alive(doc, _now()) else None

    def get_states(self, task_uuids: Sequence[str]) -> list[TaskState | None]:
        """Several states in one query, in order (``None`` for unknown or expired ones)."""
        if not task_uuids:
            return []
        query = {"_id": {"$in": list(task_uuids)}}
        docs = self.conn.call("reading task states", lambda: list(self.tasks.find(query)))
        now = _now()
        found = {doc["_id"]: doc for doc in docs if _alive(doc, now)}
        return [self._decode(found[u]) if u in found else None for u in task_uuids]

    def _completed(self, task_uuids: Sequence[str]) -> dict[str, TaskState]:
        query = {"_id": {"$in": list(task_uuids)}, "state": {"$in": COMPLETED}}
        docs = self.conn.call("reading task states", lambda: list(self.tasks.find(query)))
        now = _now()
        return {doc["_id"]: self._decode(doc) for doc in docs if _alive(doc, now)}

    # waiting ---------------------------------------------------------------------------------
    def wait(self, task_uuids: Sequence[str], timeout: float) -> dict[str, TaskState]:
        """Block until every task is SUCCESS or FAILURE or ``timeout`` passed; the completed states
        found. Follows a change stream where the server has them, else polls adaptively."""
        wanted = list(dict.fromkeys(task_uuids))
        done: dict[str, TaskState] = {}
        if not wanted:
            return done
        deadline = time.monotonic() + max(0.0, timeout)
        failures = 0
        while True:
            try:
                if self.change_streams is not False:
                    self._wait_changes(wanted, done, deadline)
                else:
                    self._wait_polling(wanted, done, deadline)
                return done
            except MongoUnavailableError:
                # a restart or failover: ride it out a few times, then say so
                failures += 1
                remaining = deadline - time.monotonic()
                if failures > WAIT_RETRIES or remaining <= 0:
                    raise
                time.sleep(min(0.25 * failures, remaining))

    def _wait_polling(self, wanted: list[str], done: dict[str, TaskState], deadline: float) -> None:
        interval = POLL_MIN
        while True:
            pending = [u for u in wanted if u not in done]
            done.update(self._completed(pending))
            remaining = deadline - time.monotonic()
            if len(done) == len(wanted) or remaining <= 0:
                return
            time.sleep(min(interval, remaining))
            interval = min(interval * POLL_GROWTH, POLL_MAX)

    def _wait_changes(self, wanted: list[str], done: dict[str, TaskState], deadline: float) -> None:
        pending = [u for u in wanted if u not in done]
        pipeline = [
            {
                "$match": {
                    "documentKey._id": {"$in": pending},
                    "operationType": {"$in": ["insert", "update", "replace"]},
                }
            }
        ]
        slice_ms = max(1, int(1000 * min(CHANGE_SLICE, max(0.0, deadline - time.monotonic()))))
        try:
            stream = self.tasks.watch(pipeline, full_document="updateLookup", max_await_time_ms=slice_ms)
        except OperationFailure as exc:
            if exc.code == NO_CHANGE_STREAMS and self.change_streams is None:
                logger.info("MongoDB at %s has no change streams: wait() polls", self.target.describe())
                self.change_streams = False
                self._wait_polling(wanted, done, deadline)
                return
            raise self.conn.error("opening a change stream", exc) from None
        except PyMongoError as exc:
            raise self.conn.error("opening a change stream", exc) from None
        self.change_streams = True
        with stream, self.conn.translating("waiting for results"):
            # the stream is open before this read: a state written after it shows up in the stream
            done.update(self._completed(pending))
            while len(done) < len(wanted) and deadline - time.monotonic() > 0:
                change = stream.try_next()
                doc = change.get("fullDocument") if change is not None else None
                if doc is None or doc.get("state") not in COMPLETED or not _alive(doc, _now()):
                    continue
                state = self._decode(doc)
                if state.task_uuid in wanted:
                    done[state.task_uuid] = state

    # groups ----------------------------------------------------------------------------------
    def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        """Record the group's members in order (replacing an earlier record of the same uuid)."""
        now = _now()
        doc: Document = {
            "task_uuids": list(task_uuids),
            "chord_triggered": False,
            "lock": False,
            "created_at": now,
        }
        delete_at = self._delete_at(now)
        if delete_at is not None:
            doc["delete_at"] = delete_at
        self.conn.call(
            "storing a group", lambda: self.groups.replace_one({"_id": group_uuid}, doc, upsert=True)
        )

    def group_states(self, group_uuid: str) -> list[TaskState]:
        """Every member's state in group order (PENDING for members with none yet); refreshes the
        group's expiry. Raises :class:`UnknownGroupError`."""
        now = _now()
        meta = self.conn.call(
            "reading a group",
            lambda: self.groups.find_one_and_update(  # pushing delete_at forward: safe to repeat
                {"_id": group_uuid, "delete_at": _not_before(now)},
                self._expiry_update(now),
                projection={"task_uuids": True},
                return_document=ReturnDocument.AFTER,
            ),
        )
        if meta is None:
            raise UnknownGroupError(f"group {group_uuid!r} is unknown or expired")
        members = meta.get("task_uuids")
        if not isinstance(members, list) or not all(isinstance(u, str) for u in members):
            raise BackendError(f"the record of group {group_uuid!r} has no valid task_uuids")
        states = self.get_states(members)
        return [state or TaskState(u, State.PENDING) for u, state in zip(members, states, strict=True)]

    def trigger_chord(self, group_uuid: str) -> bool:
        """True for exactly one caller per group: the one whose update flipped ``chord_triggered``.

        Not retried after a lost connection: the flip may have happened, and a retry would answer
        False for it (a worker that redelivers the member then recovers the callback)."""
        now = _now()
        with self.conn.translating("triggering a chord"):
            before = self.groups.find_one_and_update(
                {"_id": group_uuid, "chord_triggered": False, "delete_at": _not_before(now)},
                {"$set": {"chord_triggered": True}},
                projection={"_id": True},
            )
            if before is not None:
                return True
            meta = self.groups.find_one({"_id": group_uuid}, projection={"delete_at": True})
        if not _alive(meta, now):
            raise UnknownGroupError(f"group {group_uuid!r} is unknown or expired")
        return False

    # purging ---------------------------------------------------------------------------------
    def purge_state(self, task_uuid: str) -> None:
        self.conn.call("purging a state", lambda: self.tasks.delete_one({"_id": task_uuid}))

    def purge_group(self, group_uuid: str) -> None:
        self.conn.call("purging a group", lambda: self.groups.delete_one({"_id": group_uuid}))

    def close(self) -> None:
        self.conn.close()
