"""What the dashboard shows, read from the app's broker, result backend and events store.

Plain functions and dataclasses (no web framework here), so the pages are thin and this is tested
directly. Every read is bounded: the recent-tasks list reads a window of the newest events
(:data:`MAX_WINDOW` at most), never the whole store.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import codec
from ..app import Machinery
from ..broker import SupportsDeadLetters, SupportsDepth
from ..errors import MachineryError, UnknownGroupError
from ..events import SupportsEvents, TaskEvent
from ..inspection import GroupProgress, group_progress, task_history
from ..redact import redact_url
from ..signature import Signature, TaskState

__all__ = [
    "MAX_WINDOW",
    "PER_PAGE",
    "STATE_AFTER",
    "DeadLetterRow",
    "QueueRow",
    "TaskDetail",
    "TaskRow",
    "TasksPage",
    "codec_text",
    "dead_letter_rows",
    "known_queues",
    "queue_rows",
    "recent_tasks",
    "recorded_signature",
    "redact_text",
    "task_detail",
]

#: tasks per page of the recent-tasks list
PER_PAGE = 50
#: events read per listed task (a task usually has received, started and succeeded)
EVENTS_PER_TASK = 4
#: the most events one page reads; older tasks are found by uuid (the search box)
MAX_WINDOW = 20_000

#: the state a task is in after an event of this kind (the backend's names)
STATE_AFTER = {
    "received": "RECEIVED",
    "started": "STARTED",
    "succeeded": "SUCCESS",
    "failed": "FAILURE",
    "retried": "RETRY",
    "dead_lettered": "DEAD",
}

_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


def redact_text(text: str) -> str:
    """Every URL in ``text`` redacted (errors may quote a connection URL)."""
    return _URL_RE.sub(lambda m: redact_url(m.group(0)), text)


# ------------------------------------------------------------------------------------------ tasks


@dataclass(frozen=True)
class TaskRow:
    """One task of the recent-tasks list, as its newest event tells."""

    uuid: str
    name: str
    queue: str
    state: str
    worker: str
    first_at: float
    last_at: float
    runtime: float | None
    error: str | None
    can_resend: bool


@dataclass(frozen=True)
class TasksPage:
    """A page of the recent-tasks list (newest first)."""

    rows: list[TaskRow]
    page: int
    has_next: bool
    #: True when the next page would read more than :data:`MAX_WINDOW` events
    window_full: bool
    #: how many of the newest events were read
    window: int


def recent_tasks(
    store: SupportsEvents, page: int = 1, per_page: int = PER_PAGE, state: str = ""
) -> TasksPage:
    """The tasks of ``page`` (1-based), newest event first, optionally only those in ``state``.

    Reads the newest ``page * per_page * EVENTS_PER_TASK`` events (four times as many with a ``state``
    filter; at most :data:`MAX_WINDOW`) and groups them by task: a page far back costs more than the
    first, the first is always cheap.
    """
    page = max(1, page)
    window = min(page * per_page * EVENTS_PER_TASK * (4 if state else 1), MAX_WINDOW)
    events = store.recent_events(limit=window)
    newest: dict[str, TaskEvent] = {}
    oldest: dict[str, TaskEvent] = {}
    resendable: set[str] = set()
    for event in events:  # newest first
        newest.setdefault(event.task_uuid, event)
        oldest[event.task_uuid] = event
        if event.signature is not None:
            resendable.add(event.task_uuid)
    rows = [
        _task_row(event, oldest[uuid], uuid in resendable)
        for uuid, event in newest.items()
        if not state or STATE_AFTER[event.kind] == state
    ]
    start = (page - 1) * per_page
    return TasksPage(
        rows=rows[start : start + per_page],
        page=page,
        has_next=len(rows) > start + per_page,
        window_full=len(events) >= window == MAX_WINDOW,
        window=window,
    )


def _task_row(event: TaskEvent, first: TaskEvent, has_signature: bool) -> TaskRow:
    state = STATE_AFTER[event.kind]
    return TaskRow(
        uuid=event.task_uuid,
        name=event.task_name,
        queue=event.queue,
        state=state,
        worker=event.worker,
        first_at=first.at,
        last_at=event.at,
        runtime=event.runtime,
        error=redact_text(event.error) if event.error else None,
        can_resend=has_signature and state in ("FAILURE", "DEAD"),
    )


# ------------------------------------------------------------------------------------------ one task


@dataclass
class TaskDetail:
    """Everything the task page shows."""

    uuid: str
    state: TaskState | None
    events: list[TaskEvent] = field(default_factory=list)
    name: str = ""
    queue: str = ""
    #: None when arguments are not recorded (Config.events.record_args off), or the signature is unreadable
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    result: str | None = None
    error: str | None = None
    retries: int = 0
    trace_id: str | None = None
    group: GroupProgress | None = None
    #: the chord callback (name, uuid) when the recorded message names one
    chord_callback: tuple[str, str] | None = None
    #: the tasks that run after this one succeeds or fails: (when, name, uuid)
    callbacks: list[tuple[str, str, str]] = field(default_factory=list)
    can_resend: bool = False

    @property
    def known(self) -> bool:
        return self.state is not None or bool(self.events)

    @property
    def state_name(self) -> str:
        if self.state is not None:
            return self.state.state.value
        return STATE_AFTER[self.events[-1].kind] if self.events else "UNKNOWN"


def task_detail(app: Machinery, uuid: str, record_args: bool) -> TaskDetail:
    """A task's state (backend), history (events store), arguments (when recorded) and workflow."""
    history = task_history(app.backend, uuid)
    state, events = history.state, history.events
    detail = TaskDetail(uuid=uuid, state=state, events=events)
    if state is not None:
        detail.name = state.task_name
        if state.is_success:
            detail.result = codec_text(codec.values_from_results(state.results))
        if state.error:
            detail.error = redact_text(state.error)
    for event in events:
        detail.name = detail.name or event.task_name
        detail.queue = detail.queue or event.queue
        detail.trace_id = event.trace_id or detail.trace_id
        if detail.error is None and event.error and event.kind in ("failed", "dead_lettered"):
            detail.error = redact_text(event.error)
    detail.retries = sum(1 for e in events if e.kind == "retried")
    sig = _recorded_signature(events)
    if sig is not None:
        if record_args:
            detail.args, detail.kwargs = sig.arg_values, dict(sig.kwargs)
        detail.callbacks = [("on success", s.name, s.uuid) for s in sig.on_success]
        detail.callbacks += [("on error", s.name, s.uuid) for s in sig.on_error]
        if sig.chord_callback is not None:
            detail.chord_callback = (sig.chord_callback.name, sig.chord_callback.uuid)
        detail.can_resend = detail.state_name in ("FAILURE", "DEAD")
    group_uuid = next((e.group_uuid for e in events if e.group_uuid), None) or (sig.group_uuid if sig else "")
    if group_uuid:
        with contextlib.suppress(UnknownGroupError):  # expired, or purged
            detail.group = group_progress(app.backend, group_uuid)
    return detail


def recorded_signature(store: SupportsEvents, uuid: str) -> Signature | None:
    """The newest wire message recorded for a task (Config.events.record_args), or None."""
    return _recorded_signature(store.task_events(uuid))


def _recorded_signature(events: Sequence[TaskEvent]) -> Signature | None:
    for event in reversed(events):
        if event.signature is not None:
            try:
                return codec.signature_from_dict(event.signature)
            except MachineryError:
                return None
    return None


def codec_text(value: Any) -> str:
    """A value for humans: JSON; several values (a tuple) comma-separated."""
    values = value if isinstance(value, tuple) else (value,)
    return ", ".join(json.dumps(v, ensure_ascii=False, default=str) for v in values)


# ------------------------------------------------------------------------------------------ workers


# ------------------------------------------------------------------------------------------ queues


@dataclass(frozen=True)
class QueueRow:
    """A queue and what waits in it (None: the broker cannot tell)."""

    name: str
    pending: int | None
    delayed: int | None


def known_queues(app: Machinery, store: SupportsEvents | None, extra: Iterable[str] = ()) -> list[str]:
    """The default queue, the queues live workers consume and those of recent events."""
    names = {app.config.default_queue, *extra}
    if store is not None:
        for beat in store.workers():
            names.update(beat.queues)
        names.update(e.queue for e in store.recent_events(limit=200) if e.queue)
    return sorted(names)


def queue_rows(app: Machinery, queues: Sequence[str]) -> list[QueueRow]:
    """Pending (``SupportsDepth`` when the broker counts, else its pending list) and delayed counts."""
    broker = app.broker
    try:
        delayed_sigs: list[Signature] | None = broker.delayed()
    except NotImplementedError:
        delayed_sigs = None
    rows = []
    for queue in queues:
        delayed = None if delayed_sigs is None else sum(1 for s in delayed_sigs if s.routing_key == queue)
        rows.append(QueueRow(queue, _pending_count(app, queue), delayed))
    return rows


def _pending_count(app: Machinery, queue: str) -> int | None:
    broker = app.broker
    if isinstance(broker, SupportsDepth):
        depth = broker.depth(queue)
        if depth is not None:
            return depth
    try:
        return len(broker.pending(queue))
    except NotImplementedError:
        return None


# ------------------------------------------------------------------------------------------ dead letters


@dataclass(frozen=True)
class DeadLetterRow:
    """One dead letter; ``args`` only when arguments may be shown (Config.events.record_args)."""

    queue: str
    uuid: str
    name: str
    reason: str
    time: float
    delivery_count: int
    args: str | None
    readable: bool


def dead_letter_rows(
    app: Machinery, queues: Sequence[str], record_args: bool, limit: int = 100
) -> list[DeadLetterRow] | None:
    """The dead letters of ``queues`` (``limit`` per queue), or None when the broker keeps none."""
    broker = app.broker
    if not isinstance(broker, SupportsDeadLetters):
        return None
    rows = []
    for queue in queues:
        for letter in broker.dead_letters(queue, limit=limit):
            sig = letter.signature
            args = None
            if sig is not None and record_args:
                args = ", ".join(
                    [codec_text(v) for v in sig.arg_values]
                    + [f"{k}={codec_text(v)}" for k, v in sig.kwargs.items()]
                )
            rows.append(
                DeadLetterRow(
                    queue=queue,
                    uuid=sig.uuid if sig is not None else "",
                    name=sig.name if sig is not None else "",
                    reason=redact_text(letter.reason),
                    time=letter.time.timestamp(),
                    delivery_count=letter.delivery_count,
                    args=args,
                    readable=sig is not None,
                )
            )
    return rows
