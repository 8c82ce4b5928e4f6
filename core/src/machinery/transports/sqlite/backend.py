"""``sqlite:///path.db``: task states and group records on one SQLite file, safe across processes.

States are Go Machinery's TaskState JSON (``record``) plus the columns needed to merge and query
without decoding (state, task name, creation time). Results expire ``results_expire_in`` seconds
(0 means 3600; -1 never: their ``expires_at`` is infinite) after their last write: expired rows are
invisible at once and deleted by a sweep that runs with later writes. A group lives as long as its
members keep writing states, so a long workflow does not lose its group (Go Machinery #352).
``trigger_chord`` is one conditional UPDATE: true exactly once per group across every process.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import time
from collections.abc import Sequence
from datetime import datetime

from ... import codec
from ...backend import BaseBackend
from ...capabilities import Capability
from ...config import Config
from ...errors import BackendError, UnknownGroupError
from ...signature import GroupMeta, State, TaskState, now_utc
from .events import SQLiteEvents
from .store import (
    EVENTS,
    SQLiteStore,
    SQLiteTarget,
    chunks,
    events_target,
    parse_sqlite_url,
    placeholders,
)

__all__ = ["SQLiteBackend"]

STATES = "states"
_COMPLETED = (State.SUCCESS.value, State.FAILURE.value)


def _with(state: TaskState, task_name: str, created_at: datetime) -> TaskState:
    """A shallow copy of ``state`` with the merged name and creation time (``copy.copy`` costs ~10x:
    the state writer merges every state it stores)."""
    merged: TaskState = object.__new__(TaskState)
    merged.__dict__ = {**state.__dict__, "task_name": task_name, "created_at": created_at}
    return merged


@functools.lru_cache(maxsize=256)
def _parse_created(text: str) -> datetime:
    """A stored ``created_at`` column (the tasks of one send share it: cached)."""
    return datetime.fromisoformat(text)


@functools.lru_cache(maxsize=256)
def _created_text(created: datetime) -> str:
    """The ``created_at`` column's text for ``created`` (cached like :func:`_parse_created`)."""
    return created.isoformat()


class SQLiteBackend(SQLiteEvents, BaseBackend):
    """Result backend on a SQLite file (WAL), with the events store (:mod:`machinery.events`)."""

    capabilities = frozenset({Capability.EXPIRY, Capability.MULTI_PROCESS})
    #: a state written by another process wakes ``wait`` within this many seconds
    poll_interval = 0.02
    #: at most this many seconds between sweeps of expired rows
    sweep_interval = 60.0

    def __init__(self, path: str | os.PathLike[str] | SQLiteTarget, config: Config | None = None) -> None:
        super().__init__(config)
        target = path if isinstance(path, SQLiteTarget) else SQLiteTarget(os.path.abspath(os.fspath(path)))
        self.target = target
        self._store = SQLiteStore(target, BackendError)
        self._events = SQLiteStore(events_target(target), BackendError, EVENTS)
        self._next_sweep = 0.0

    @classmethod
    def from_url(cls, url: str, config: Config) -> SQLiteBackend:
        """``sqlite:///relative.db`` or ``sqlite:////absolute.db``. No I/O."""
        return cls(parse_sqlite_url(url), config)

    def __repr__(self) -> str:
        return f"<SQLiteBackend {self.target.path}>"

    @property
    def path(self) -> str:
        return self.target.path

    # states ----------------------------------------------------------------------------------
    def set_state(self, state: TaskState) -> None:
        self.set_states([state])

    def set_states(self, states: Sequence[TaskState]) -> None:
        """Store ``states`` in one transaction, each merged over the stored one (task name and
        creation time kept), and keep their groups alive."""
        if not states:
            return
        with self._store.write("set_states") as conn:
            self.write_states(conn, states)
        self._store.hub.notify(STATES)

    def write_states(
        self, conn: sqlite3.Connection, states: Sequence[TaskState], refresh_groups: bool = True
    ) -> None:
        """:meth:`set_states`'s writes, inside the caller's transaction on ``conn`` (the broker's
        ``publish_with_states`` stores PENDING states and publishes in one transaction).
        ``refresh_groups=False`` skips extending the tasks' groups (at send time they were just made)."""
        now = time.time()
        expires_at = self.expires_at(now)
        uuids = list(dict.fromkeys(s.task_uuid for s in states))
        old: dict[str, tuple[str, str | None]] = {}
        # nothing to merge when every state has its name and creation time (PENDING states at send)
        if not all(s.task_name and s.created_at is not None for s in states):
            for part in chunks(uuids):
                cursor = conn.execute(
                    f"SELECT uuid, task_name, created_at FROM states "
                    f"WHERE uuid IN ({placeholders(len(part))}) AND expires_at > ?",
                    (*part, now),
                )
                old.update((u, (name, created)) for u, name, created in cursor)
        rows = []
        now_dt: datetime | None = None
        for state in states:
            name, created = state.task_name, state.created_at
            previous = old.get(state.task_uuid)
            if previous is not None:
                name = name or previous[0]
                if created is None and previous[1]:
                    created = _parse_created(previous[1])
            if created is None:
                created = now_dt = now_dt or now_utc()
            merged = state
            if name != state.task_name or created is not state.created_at:
                merged = _with(state, name, created)
            text = _created_text(created)
            old[state.task_uuid] = (name, text)  # a later state in this batch
            rows.append(
                (
                    state.task_uuid,
                    State(merged.state).value,
                    name,
                    text,
                    codec.encode_state(merged),
                    expires_at,
                )
            )
        conn.executemany(
            "INSERT OR REPLACE INTO states (uuid, state, task_name, created_at, record, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
        for part in chunks(uuids) if refresh_groups else ():
            conn.execute(
                f"UPDATE groups SET expires_at = ? WHERE expires_at > ? AND group_uuid IN ("
                f"SELECT group_uuid FROM group_members WHERE task_uuid IN ({placeholders(len(part))}))",
                (expires_at, now, *part),
            )
        if now >= self._next_sweep:
            self._sweep(conn, now)

    def notify_states(self) -> None:
        """Wake this process's waiters after states were written (also by the broker)."""
        self._store.hub.notify(STATES)

    def get_state(self, task_uuid: str) -> TaskState | None:
        row = self._store.execute(
            "get_state",
            "SELECT record FROM states WHERE uuid = ? AND expires_at > ?",
            (task_uuid, time.time()),
        ).fetchone()
        return None if row is None else self._decode(task_uuid, row[0])

    def _decode(self, task_uuid: str, record: bytes) -> TaskState:
        try:
            return codec.decode_state(record)
        except Exception as exc:
            raise BackendError(
                f"sqlite backend {self.path!r}: state of {task_uuid!r} is unreadable: {exc}"
            ) from exc

    def _completed(self, uuids: Sequence[str]) -> dict[str, TaskState]:
        done: dict[str, TaskState] = {}
        now = time.time()
        with self._store.read("wait") as conn:
            for part in chunks(uuids):
                cursor = conn.execute(
                    f"SELECT uuid, record FROM states WHERE uuid IN ({placeholders(len(part))}) "
                    f"AND state IN (?, ?) AND expires_at > ?",
                    (*part, *_COMPLETED, now),
                )
                done.update((u, self._decode(u, record)) for u, record in cursor)
        return done

    def wait(self, task_uuids: Sequence[str], timeout: float) -> dict[str, TaskState]:
        """Block until every task is SUCCESS or FAILURE or ``timeout`` passed; the completed
        states found. Woken at once by writes in this process, within a few ms by others."""
        wanted = list(dict.fromkeys(task_uuids))
        deadline = time.monotonic() + max(0.0, timeout)
        done: dict[str, TaskState] = {}
        store = self._store
        interval = store.poll_min
        while True:
            seen = store.snapshot(STATES)
            missing = [u for u in wanted if u not in done]
            started = time.monotonic()
            if missing:
                done.update(self._completed(missing))
            checked = time.monotonic()
            remaining = deadline - checked
            if len(done) == len(wanted) or remaining <= 0:
                return done
            # Waiting for thousands of tasks makes each look cost milliseconds: look at most at a
            # fifth of the time, so the waiter does not starve the workers writing those states.
            pause = 4 * (checked - started)
            if pause > 0.001:
                time.sleep(min(pause, remaining))
                remaining = deadline - time.monotonic()
            interval = store.wait_change(STATES, seen, remaining, interval, self.poll_interval)

    def purge_state(self, task_uuid: str) -> None:
        self._store.execute_write("purge_state", "DELETE FROM states WHERE uuid = ?", (task_uuid,))

    # groups ----------------------------------------------------------------------------------
    def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        """Record the group's members in order (replacing an earlier record of the same uuid)."""
        now = time.time()
        members = list(task_uuids)
        with self._store.write("init_group") as conn:
            conn.execute("DELETE FROM group_members WHERE group_uuid = ?", (group_uuid,))
            conn.execute(
                "INSERT OR REPLACE INTO groups "
                "(group_uuid, task_uuids, chord_triggered, created_at, expires_at) VALUES (?, ?, 0, ?, ?)",
                (group_uuid, json.dumps(members), now_utc().isoformat(), self.expires_at(now)),
            )
            conn.executemany(
                "INSERT OR IGNORE INTO group_members (task_uuid, group_uuid) VALUES (?, ?)",
                [(u, group_uuid) for u in members],
            )

    def _unknown(self, group_uuid: str) -> UnknownGroupError:
        return UnknownGroupError(
            f"group {group_uuid!r} is unknown to the sqlite backend {self.path!r}: never initialised, "
            f"purged, or expired ({self.expires_in}s after its last activity)"
        )

    def group_states(self, group_uuid: str) -> list[TaskState]:
        """Every member's state in group order; PENDING for members without a state yet."""
        now = time.time()
        with self._store.read("group_states") as conn:
            row = conn.execute(
                "SELECT task_uuids FROM groups WHERE group_uuid = ? AND expires_at > ?", (group_uuid, now)
            ).fetchone()
            if row is None:
                raise self._unknown(group_uuid)
            members: list[str] = json.loads(row[0])
            records: dict[str, bytes] = {}
            unique = list(dict.fromkeys(members))
            for part in chunks(unique):
                cursor = conn.execute(
                    f"SELECT uuid, record FROM states "
                    f"WHERE uuid IN ({placeholders(len(part))}) AND expires_at > ?",
                    (*part, now),
                )
                records.update(cursor.fetchall())
        return [self._decode(u, records[u]) if u in records else TaskState(u, State.PENDING) for u in members]

    def group_meta(self, group_uuid: str) -> GroupMeta:
        """The group's record (``chord_triggered`` for ``machinery inspect group``)."""
        row = self._store.execute(
            "group_meta",
            "SELECT task_uuids, chord_triggered, created_at FROM groups "
            "WHERE group_uuid = ? AND expires_at > ?",
            (group_uuid, time.time()),
        ).fetchone()
        if row is None:
            raise self._unknown(group_uuid)
        created = datetime.fromisoformat(row[2]) if row[2] else None
        return GroupMeta(group_uuid, json.loads(row[0]), bool(row[1]), created_at=created)

    def trigger_chord(self, group_uuid: str) -> bool:
        """True exactly once per group, whoever asks (one conditional UPDATE); keeps the group alive."""
        now = time.time()
        expires_at = self.expires_at(now)
        with self._store.write("trigger_chord") as conn:
            won = conn.execute(
                "UPDATE groups SET chord_triggered = 1, expires_at = ? "
                "WHERE group_uuid = ? AND chord_triggered = 0 AND expires_at > ?",
                (expires_at, group_uuid, now),
            ).rowcount
            if won:
                return True
            known = conn.execute(
                "UPDATE groups SET expires_at = ? WHERE group_uuid = ? AND expires_at > ?",
                (expires_at, group_uuid, now),
            ).rowcount
        if not known:
            raise self._unknown(group_uuid)
        return False

    def purge_group(self, group_uuid: str) -> None:
        with self._store.write("purge_group") as conn:
            conn.execute("DELETE FROM groups WHERE group_uuid = ?", (group_uuid,))
            conn.execute("DELETE FROM group_members WHERE group_uuid = ?", (group_uuid,))

    # expiry ----------------------------------------------------------------------------------
    def sweep(self) -> None:
        """Delete expired states and groups now (writes also do it every ``sweep_interval`` s)."""
        with self._store.write("sweep") as conn:
            self._sweep(conn, time.time())
        self.sweep_events()

    def _sweep(self, conn: sqlite3.Connection, now: float) -> None:
        conn.execute("DELETE FROM states WHERE expires_at <= ?", (now,))
        conn.execute(
            "DELETE FROM group_members "
            "WHERE group_uuid IN (SELECT group_uuid FROM groups WHERE expires_at <= ?)",
            (now,),
        )
        conn.execute("DELETE FROM groups WHERE expires_at <= ?", (now,))
        self._next_sweep = now + min(self.sweep_interval, float(self.expires_in))

    def close(self) -> None:
        """Close the connections. Idempotent."""
        self._store.close()
        self._events.close()
