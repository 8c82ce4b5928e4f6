"""The events store: worker heartbeats and task events, for ``machinery inspect`` and the dashboard.

A result backend that can keep events implements :class:`SupportsEvents` (memory://, sqlite://,
machinery-redis, machinery-mongodb do). Workers write to it in batches from a background thread
(:mod:`machinery.worker.emitter`); readers ask for the live workers, one task's history, or the
newest events. The store is bounded to the newest ``Config.events.max_events`` task events and
forgets events and heartbeats ``results_expire_in`` seconds after they were written.

A backend without the protocol (memcache, dynamodb, null) keeps no events: :func:`events_store` returns
``None`` and the tools say so (:func:`no_events_text`).

Events are observability: they never carry a task's arguments unless ``Config.events.record_args`` is
on (then :attr:`TaskEvent.signature` holds the whole wire-format message, arguments included, which
may hold secrets), and an error text is the same text a FAILURE state stores.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Protocol, get_args, runtime_checkable

import orjson

__all__ = [
    "LOST_AFTER_BEATS",
    "TASK_EVENT_KINDS",
    "SupportsEventRows",
    "SupportsEvents",
    "TaskEvent",
    "TaskEventKind",
    "WorkerHeartbeat",
    "event_row_json",
    "events_store",
    "no_events_text",
]

TaskEventKind = Literal["received", "started", "succeeded", "failed", "retried", "dead_lettered"]
#: every kind, in the order a task normally goes through them
TASK_EVENT_KINDS: tuple[TaskEventKind, ...] = get_args(TaskEventKind)
#: a worker whose last heartbeat is older than this many of its intervals is shown as lost
LOST_AFTER_BEATS = 3


def _known_fields(names: frozenset[str], data: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``data`` in ``names`` (a newer writer may add fields: they are ignored)."""
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """Something that happened to a task in a worker."""

    kind: TaskEventKind
    task_uuid: str
    task_name: str
    queue: str
    #: :attr:`WorkerHeartbeat.worker` of the worker that saw it
    worker: str
    #: unix time (seconds)
    at: float
    #: seconds the task ran, on succeeded / failed
    runtime: float | None = None
    #: the error text, on failed / retried / dead_lettered (the same text the FAILURE state stores)
    error: str | None = None
    group_uuid: str | None = None
    #: OpenTelemetry trace id (32 hex digits) when a span was active
    trace_id: str | None = None
    #: the wire-format message (Go Machinery's Signature JSON as a dict), only with
    #: ``Config.events.record_args``: arguments may hold secrets
    signature: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (every field, by name; ``signature`` is not copied)."""
        return {name: getattr(self, name) for name in _EVENT_FIELDS}

    def to_json(self) -> bytes:
        """``to_dict`` as compact UTF-8 JSON (``from_dict(json.loads(...))`` reads it back)."""
        try:
            return orjson.dumps(self)  # a dataclass: every field, in order, without building a dict
        except TypeError:  # what orjson refuses (an int beyond 64 bits, a lone surrogate) json may take
            return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskEvent:
        """The event ``to_dict`` gave; unknown keys are ignored, a missing required one raises KeyError."""
        values = _known_fields(_EVENT_NAMES, data)
        if len(values) < len(_EVENT_FIELDS):
            for name in ("kind", "task_uuid", "task_name", "queue", "worker", "at"):
                if name not in values:
                    raise KeyError(f"task event without {name!r}: {dict(data)!r}")
        values["at"] = float(values["at"])
        if values.get("runtime") is not None:
            values["runtime"] = float(values["runtime"])
        return cls(**values)


_EVENT_FIELDS = tuple(f.name for f in fields(TaskEvent))
_EVENT_NAMES = frozenset(_EVENT_FIELDS)


@dataclass(frozen=True, slots=True)
class WorkerHeartbeat:
    """A worker's latest news: who it is, what it consumes and how busy it is."""

    #: unique id, ``host:pid:4hex``
    worker: str
    hostname: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    busy: int
    processed: int
    failed: int
    #: machinery-core version
    version: str
    started_at: float
    sent_at: float
    #: seconds between its heartbeats
    interval: float
    #: True in the last heartbeat of a worker that stopped cleanly (it is then never "lost")
    stopped: bool = False

    def lost(self, now: float | None = None) -> bool:
        """True when the worker missed :data:`LOST_AFTER_BEATS` heartbeats without having stopped
        cleanly (it died, hangs or lost its connection)."""
        now = time.time() if now is None else now
        return not self.stopped and now - self.sent_at > LOST_AFTER_BEATS * max(self.interval, 0.001)

    @property
    def status(self) -> str:
        """``live``, ``lost`` or ``stopped``, as of now."""
        return "stopped" if self.stopped else "lost" if self.lost() else "live"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``queues`` as a list)."""
        data = asdict(self)
        data["queues"] = list(self.queues)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkerHeartbeat:
        """The heartbeat ``to_dict`` gave; unknown keys are ignored."""
        values = _known_fields(frozenset(f.name for f in fields(cls)), data)
        values["queues"] = tuple(values.get("queues", ()))
        for name in ("pid", "concurrency", "busy", "processed", "failed"):
            values[name] = int(values[name])
        for name in ("started_at", "sent_at", "interval"):
            values[name] = float(values[name])
        values["stopped"] = bool(values.get("stopped", False))
        return cls(**values)


@runtime_checkable
class SupportsEvents(Protocol):
    """What a result backend implements to keep events (optional; see core/PLUGINS.md).

    Bounded to the newest ``config.events.max_events`` task events; events and heartbeats expire
    ``results_expire_in`` seconds (0 means 3600) after they were written. Writes come in batches from
    one background thread per worker: one round trip per call where the store can.
    """

    def record_heartbeat(self, beat: WorkerHeartbeat) -> None:
        """Store ``beat`` as the worker's latest (replacing its previous one)."""

    def workers(self) -> list[WorkerHeartbeat]:
        """The latest beat of every worker not expired yet, live and lost, by worker id."""

    def record_events(self, events: Sequence[TaskEvent]) -> None:
        """Store a batch of events (in one round trip where the store can)."""

    def task_events(self, task_uuid: str) -> list[TaskEvent]:
        """Every stored event of one task, oldest first."""

    def recent_events(self, limit: int = 100) -> list[TaskEvent]:
        """The newest ``limit`` events across tasks, newest first."""


@runtime_checkable
class SupportsEventRows(Protocol):
    """An events store's optional fast path: a batch of events as rows, each the fields of a
    :class:`TaskEvent` in its order (``TaskEvent(*row)`` is the event). A worker writes rows when its
    store has this method, so it need not build an event object per event (three per task)."""

    def record_event_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Store the events ``rows`` stand for, as :meth:`SupportsEvents.record_events` would."""


def event_row_json(row: Sequence[Any]) -> bytes:
    """What ``TaskEvent(*row).to_json()`` gives, without building the event."""
    try:
        return orjson.dumps(dict(zip(_EVENT_FIELDS, row, strict=True)))
    except TypeError:  # what orjson refuses json may take (as TaskEvent.to_json)
        return TaskEvent(*row).to_json()


def events_store(backend: object) -> SupportsEvents | None:
    """``backend`` when it keeps events, else None."""
    return backend if isinstance(backend, SupportsEvents) else None


def no_events_text(backend: object) -> str:
    """What the tools say about a backend that keeps no events."""
    return (
        f"the result backend ({type(backend).__name__}) keeps no events: no worker heartbeats or task "
        "history are available; use sqlite://, memory://, redis:// or mongodb:// as the result backend"
    )
