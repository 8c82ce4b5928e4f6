"""``EventsStoreContract``: a backend's events store (:class:`machinery.events.SupportsEvents`).

Round trips of every field, order, the ``max_events`` bound, expiry and heartbeats. Server-side work
only: no worker runs, so the whole class takes well under a second on a local store.
"""

from __future__ import annotations

import copy
import time
from typing import Any, ClassVar

import pytest

from ..backend import Backend
from ..config import Config
from ..events import TASK_EVENT_KINDS, SupportsEvents, TaskEvent, TaskEventKind, WorkerHeartbeat
from ._base import ContractBase
from ._util import unique

__all__ = ["EventsStoreContract"]


def _event(
    task_uuid: str, kind: TaskEventKind = "succeeded", at: float | None = None, **fields: Any
) -> TaskEvent:
    return TaskEvent(
        kind=kind,
        task_uuid=task_uuid,
        task_name="contract_events_task",
        queue="contract_events",
        worker="host:1:abcd",
        at=time.time() if at is None else at,
        **fields,
    )


def _beat(worker: str, sent_at: float | None = None, busy: int = 0, interval: float = 5.0) -> WorkerHeartbeat:
    now = time.time()
    return WorkerHeartbeat(
        worker=worker,
        hostname="host",
        pid=4242,
        queues=("a", "b"),
        concurrency=8,
        busy=busy,
        processed=17,
        failed=2,
        version="0.0.0",
        started_at=now - 60,
        sent_at=now if sent_at is None else sent_at,
        interval=interval,
    )


class EventsStoreContract(ContractBase):
    """Subclass with a ``backend_url`` fixture whose backend implements ``SupportsEvents``.

    ``max_events_slack``: how many events beyond ``max_events`` the store may keep for a while (a
    redis stream trimmed with ``MAXLEN ~`` trims whole nodes). The newest ``max_events`` must always
    be there.
    """

    max_events_slack: ClassVar[int] = 0

    def events_backend(self, config: Config | None = None) -> SupportsEvents:
        backend: Backend = self.new_backend(config)
        if not isinstance(backend, SupportsEvents):
            pytest.fail(f"{type(backend).__name__} does not implement machinery.events.SupportsEvents")
        return backend

    def test_events_round_trip_every_field(self) -> None:
        store = self.events_backend()
        uuid = unique("task")
        now = time.time()
        signature = {"UUID": uuid, "Name": "contract_events_task", "Args": [{"Type": "int64", "Value": 1}]}
        written = [
            _event(uuid, kind, at=now + i * 0.001, group_uuid="g1", trace_id="ab" * 16)
            for i, kind in enumerate(TASK_EVENT_KINDS)
        ]
        written[3] = _event(uuid, "failed", at=now + 0.003, runtime=1.25, error="boom ☃", signature=signature)
        store.record_events(written)
        assert store.task_events(uuid) == written, "a task's events did not come back unchanged, oldest first"
        assert store.task_events(unique("task")) == [], "an unknown task has events"
        store.record_events([])  # an empty batch is fine

    def test_events_recent_newest_first(self) -> None:
        store = self.events_backend()
        now = time.time()
        uuids = [unique("task") for _ in range(5)]
        store.record_events([_event(u, at=now + i * 0.001) for i, u in enumerate(uuids[:3])])
        store.record_events([_event(u, at=now + (3 + i) * 0.001) for i, u in enumerate(uuids[3:])])
        recent = store.recent_events(5)
        assert [e.task_uuid for e in recent] == uuids[::-1], "recent_events is not newest first"
        assert [e.task_uuid for e in store.recent_events(2)] == uuids[:2:-1][:2], "limit not honoured"

    def test_events_of_tasks_interleaved_in_one_batch(self) -> None:
        """Two tasks' events interleaved in one batch (as a worker running both writes them): the newest
        first across tasks, and each task's history, keep the batch's order (a store may group a batch's
        writes per task, never reorder them)."""
        store = self.events_backend()
        now = time.time()
        a, b = unique("task"), unique("task")
        kinds: tuple[TaskEventKind, ...] = ("received", "started", "succeeded")
        batch = [
            _event(uuid, kind, at=now + (2 * i + j) * 0.001)
            for i, kind in enumerate(kinds)
            for j, uuid in enumerate((a, b))
        ]
        store.record_events(batch)
        recent = [(e.task_uuid, e.kind) for e in store.recent_events(6)]
        assert recent == [(e.task_uuid, e.kind) for e in reversed(batch)], "not newest first across tasks"
        assert store.task_events(a) == batch[0::2], "a task's history is not its events in order"
        assert store.task_events(b) == batch[1::2]

    def test_events_bounded_to_max_events(self) -> None:
        config = copy.copy(self.config)
        config.events.max_events = 40
        store = self.events_backend(config)
        now = time.time()
        count = 100 + self.max_events_slack  # the oldest are beyond max_events + slack
        uuids = [unique("task") for _ in range(count)]
        for start in range(0, count, 25):
            batch = uuids[start : start + 25]
            store.record_events([_event(u, at=now + i * 0.001) for i, u in enumerate(batch, start)])
        kept = [e.task_uuid for e in store.recent_events(1000)]
        assert kept[:40] == uuids[: count - 41 : -1], (
            "the newest max_events events are not all kept, newest first"
        )
        assert len(kept) <= 40 + self.max_events_slack, f"{len(kept)} events kept, max_events is 40"
        assert store.task_events(uuids[0]) == [], "an event beyond max_events is still in its task's history"
        assert len(store.task_events(uuids[-1])) == 1

    def test_events_expire_with_results(self) -> None:
        config = copy.copy(self.config)
        config.results_expire_in = 60
        store = self.events_backend(config)
        uuid = unique("task")
        old, fresh = _event(uuid, "received", at=time.time() - 120), _event(uuid, "started")
        store.record_events([old, fresh])
        assert store.task_events(uuid) == [fresh], "an event older than results_expire_in is shown"
        assert old not in store.recent_events(10)
        stale = unique("worker")
        store.record_heartbeat(_beat(stale, sent_at=time.time() - 120))
        assert stale not in [b.worker for b in store.workers()], "an expired heartbeat is listed"

    def test_events_heartbeats_latest_per_worker(self) -> None:
        store = self.events_backend()
        first, second = unique("worker"), unique("worker")
        now = time.time()
        store.record_heartbeat(_beat(first, sent_at=now - 1, busy=1))
        store.record_heartbeat(_beat(first, sent_at=now, busy=3))
        store.record_heartbeat(_beat(second, sent_at=now - 30))
        beats = {b.worker: b for b in store.workers()}
        assert beats[first].busy == 3 and beats[first].sent_at == pytest.approx(now), "not the latest beat"
        assert beats[first].queues == ("a", "b") and beats[first].pid == 4242
        assert not beats[first].lost(now) and beats[second].lost(now), "lost = missed three heartbeats"
        other = self.events_backend()  # another connection sees the same workers
        assert {first, second} <= {b.worker for b in other.workers()}
