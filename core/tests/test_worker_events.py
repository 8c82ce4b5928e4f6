"""Workers record task events and heartbeats (issue 23): what they hold, and that a slow or failing
events store never blocks or fails a task."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from machinery import Config, Group, Machinery, Signature, State
from machinery.errors import BackendError
from machinery.events import SupportsEvents, TaskEvent, WorkerHeartbeat, events_store
from machinery.testing._util import eventually
from machinery.transports.memory.backend import MemoryBackend
from machinery.worker import emitter as emitter_module
from machinery.worker.banner import banner

from .events_testlib import running, sqlite_app

_Backend = TypeVar("_Backend", bound=MemoryBackend)

TRACE = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE}-b7ad6b7169203331-01"


def kinds(events: Sequence[TaskEvent]) -> list[str]:
    return [e.kind for e in events]


def store_of(app: Machinery) -> SupportsEvents:
    store = events_store(app.backend)
    assert store is not None
    return store


def history(app: Machinery, uuid: str, last: str) -> list[TaskEvent]:
    """The task's events once its ``last`` kind was written (the writer batches every 0.5 s)."""
    store = store_of(app)

    def written() -> list[TaskEvent] | None:
        events = store.task_events(uuid)
        return events if events and events[-1].kind == last else None

    return eventually(written, 10, f"the {last} event of {uuid}")


def test_worker_records_each_kind_with_runtime_worker_group_and_trace(tmp_path: Path) -> None:
    app = sqlite_app(tmp_path)
    worker = app.worker(concurrency=2)
    with running(worker):
        traced = Signature("add", [1, 2], headers={"traceparent": TRACEPARENT})
        ok = app.send_task(traced)
        # with an OpenTelemetry SDK active (other tests set one) the publish span replaces the header
        trace = traced.headers["traceparent"].split("-")[1]
        failed = app.send_task(Signature("boom", retry_count=1))
        group = app.send_group(Group([Signature("add", [1, 1]), Signature("add", [2, 2])]))
        dead = app.send_task(Signature("add", [0, 0], headers={"machinery-deliveries": "99"}))
        assert ok.get(timeout=10) == 3 and group.get(timeout=10) == [2, 4]
        ok_events = history(app, ok.uuid, "succeeded")
        failed_events = history(app, failed.uuid, "failed")
        member_events = history(app, group[0].uuid, "succeeded")
        dead_events = history(app, dead.uuid, "dead_lettered")
        beats = eventually(
            lambda: [b for b in store_of(app).workers() if b.processed >= 5], 10, "a heartbeat"
        )
    assert kinds(ok_events) == ["received", "started", "succeeded"]
    done = ok_events[-1]
    assert done.runtime is not None and 0 <= done.runtime < 5
    assert done.trace_id == trace and done.task_name == "add" and done.queue == app.config.default_queue
    assert {e.worker for e in ok_events} == {worker.events.worker_id}
    assert done.signature is None, "arguments recorded without events.record_args"
    assert kinds(failed_events) == ["received", "started", "retried", "received", "started", "failed"]
    assert failed_events[-1].error == "boom" and failed_events[2].error == "boom"
    assert {e.group_uuid for e in member_events} == {group.group_uuid}
    assert kinds(dead_events) == ["received", "dead_lettered"] and "gave up" in (dead_events[-1].error or "")
    [beat] = beats
    assert (beat.worker, beat.concurrency, beat.queues) == (
        worker.events.worker_id,
        2,
        (app.config.default_queue,),
    )
    assert beat.failed == 2 and not beat.lost()
    recent = store_of(app).recent_events(3)
    assert recent[0].at >= recent[-1].at, "recent events are newest first"


def test_record_args_puts_the_message_in_the_events(tmp_path: Path) -> None:
    app = sqlite_app(tmp_path)
    app.config.events.record_args = True
    with running(app.worker(concurrency=1)):
        result = app.send_task(Signature("add", [20, 22]))
        assert result.get(timeout=10) == 42
        events = history(app, result.uuid, "succeeded")
    assert all(e.signature is not None for e in events)
    sig = events[-1].signature
    assert sig is not None and sig["Name"] == "add" and [a["Value"] for a in sig["Args"]] == [20, 22]


def test_events_off_records_nothing_and_starts_no_thread(tmp_path: Path) -> None:
    app = sqlite_app(tmp_path)
    app.config.events.enabled = False
    worker = app.worker(concurrency=1)
    assert not worker.events.active
    with running(worker):
        result = app.send_task(Signature("add", [1, 1]))
        assert result.get(timeout=10) == 2
        assert not [t for t in threading.enumerate() if t.name.startswith("machinery-events")]
    assert store_of(app).task_events(result.uuid) == [] and store_of(app).workers() == []
    assert "events       off (events.enabled is false)" in banner(worker)


class SlowEvents(MemoryBackend):
    """A memory backend whose events store hangs until ``release`` is set, or fails while ``down``."""

    def __init__(self, config: Config, name: str) -> None:
        super().__init__(config, name)
        self.release = threading.Event()
        self.down = threading.Event()
        self.calls = 0

    def record_events(self, events: Sequence[TaskEvent]) -> None:
        self.calls += 1
        if self.down.is_set():
            raise BackendError("events store unreachable (on cue)")
        self.release.wait(30)
        super().record_events(events)

    def record_heartbeat(self, beat: WorkerHeartbeat) -> None:
        if self.down.is_set():
            raise BackendError("events store unreachable (on cue)")
        super().record_heartbeat(beat)


def app_with(memory_url: str, backend_class: type[_Backend]) -> tuple[Machinery, _Backend]:
    """An app with an ``add`` task whose backend is a ``backend_class`` on ``memory_url``."""
    config = Config(broker=memory_url, result_backend=memory_url)
    config.worker.poll_timeout = 0.1
    config.worker.heartbeat_interval = 0.1
    backend = backend_class(config, memory_url.removeprefix("memory://"))
    app = Machinery(config, backend=backend)

    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    return app, backend


def slow_app(memory_url: str) -> tuple[Machinery, SlowEvents]:
    return app_with(memory_url, SlowEvents)


def test_a_hanging_events_store_blocks_no_task_and_drops_the_oldest(
    memory_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(emitter_module, "BUFFER_SIZE", 20)
    app, backend = slow_app(memory_url)
    worker = app.worker(concurrency=4)
    with running(worker):
        results = app.send_tasks([Signature("add", [i, i]) for i in range(60)])
        assert [r.get(timeout=10) for r in results] == [2 * i for i in range(60)], (
            "tasks waited for the store"
        )
        assert worker.events.dropped > 0, "a full buffer must drop (and count) the oldest events"
        backend.release.set()
    kept = backend.recent_events(1000)
    assert kept and kept[0].task_uuid == results[-1].uuid, "the newest events must survive"


def test_a_failing_events_store_loses_no_task_and_logs_once(
    memory_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app, backend = slow_app(memory_url)
    backend.release.set()
    backend.down.set()
    caplog.set_level(logging.DEBUG, logger="machinery")
    worker = app.worker(concurrency=2)
    started = time.monotonic()
    with running(worker):
        results = app.send_tasks([Signature("add", [i, 1]) for i in range(20)])
        assert [r.get(timeout=10) for r in results] == [i + 1 for i in range(20)]
        assert all(r.state == State.SUCCESS for r in results)
        eventually(lambda: backend.calls > 0, 5, "a write attempt")
        backend.down.clear()  # back: the next batch lands
        later = app.send_task(Signature("add", [5, 5]))
        assert later.get(timeout=10) == 10
        eventually(lambda: backend.task_events(later.uuid) or None, 10, "events after the store came back")
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and "events store failed" in r.message
    ]
    assert len(warnings) == 1, [r.message for r in warnings]
    assert any("events store is back" in r.message for r in caplog.records)
    assert time.monotonic() - started < 20


def test_banner_names_transports_redacted_queues_and_tasks(memory_url: str) -> None:
    config = Config(broker="amqp://user:s3cret@rabbit:5672//", result_backend=memory_url)
    app = Machinery(config)
    app.task(name="add")(lambda a, b: a + b)
    worker = app.worker(concurrency=3, queue="a,b", metrics_port=9808)
    text = banner(worker)
    assert "s3cret" not in text and "amqp://rabbit:5672//" in text
    assert "queues       a, b" in text and "concurrency  3 (thread pool)" in text
    assert "tasks (1)    add" in text and "http://127.0.0.1:9808/metrics" in text
    assert (
        f"events       on, without arguments, heartbeat every 5s (worker id {worker.events.worker_id})"
        in text
    )


class RowEvents(MemoryBackend):
    """A memory backend with the rows fast path: records how its events arrived."""

    def __init__(self, config: Config, name: str) -> None:
        super().__init__(config, name)
        self.row_batches = 0
        self.event_batches = 0

    def record_event_rows(self, rows: Sequence[tuple[object, ...]]) -> None:
        self.row_batches += 1
        super().record_events([TaskEvent(*row) for row in rows])  # type: ignore[arg-type]

    def record_events(self, events: Sequence[TaskEvent]) -> None:
        self.event_batches += 1
        super().record_events(events)


def test_a_store_with_the_rows_fast_path_gets_rows_and_the_same_events(memory_url: str) -> None:
    app, backend = app_with(memory_url, RowEvents)
    with running(app.worker(concurrency=2)):
        result = app.send_task(Signature("add", [2, 3]))
        assert result.get(timeout=10) == 5
        kinds = eventually(
            lambda: [e.kind for e in backend.task_events(result.uuid)] or None, 10, "the task's events"
        )
    assert kinds == ["received", "started", "succeeded"]
    assert backend.row_batches > 0 and backend.event_batches == 0  # every batch came as rows
