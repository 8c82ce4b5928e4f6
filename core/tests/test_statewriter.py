"""The state writer's batching: coalescing a task's states within one batch (issue 24)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from machinery import Config, Machinery, State
from machinery.errors import BrokerError
from machinery.signature import Signature, TaskState
from machinery.worker.statewriter import StateWriter, coalesce


def _states(*pairs: tuple[str, State]) -> list[TaskState]:
    return [TaskState(uuid, state, task_name="add") for uuid, state in pairs]


def test_a_task_finished_within_one_batch_is_written_once() -> None:
    batch = _states(("a", State.RECEIVED), ("b", State.RECEIVED), ("a", State.STARTED), ("a", State.SUCCESS))
    assert [(s.task_uuid, s.state) for s in coalesce(batch)] == [("b", State.RECEIVED), ("a", State.SUCCESS)]


def test_final_and_retry_states_are_never_dropped() -> None:
    batch = _states(("a", State.STARTED), ("a", State.RETRY), ("a", State.RECEIVED), ("a", State.FAILURE))
    kept = [s.state for s in coalesce(batch)]
    assert kept == [State.RETRY, State.FAILURE]


def test_a_batch_without_repeats_is_returned_as_is() -> None:
    batch = _states(("a", State.RECEIVED), ("b", State.STARTED), ("c", State.SUCCESS))
    assert coalesce(batch) is batch


def test_the_kept_state_takes_name_and_creation_time_of_a_dropped_one() -> None:
    created = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
    batch = [
        TaskState("a", State.RECEIVED, task_name="add", created_at=created),
        TaskState("a", State.SUCCESS),
    ]
    (kept,) = coalesce(batch)
    assert (kept.state, kept.task_name, kept.created_at) == (State.SUCCESS, "add", created)


class _Recording:
    """A backend stand-in that records every batch it is asked to store."""

    def __init__(self) -> None:
        self.batches: list[list[TaskState]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def set_states(self, states: Sequence[TaskState]) -> None:
        self.entered.set()
        self.release.wait(5)
        self.batches.append(list(states))


@contextmanager
def _writing(backend: _Recording) -> Iterator[StateWriter]:
    """A state writer over ``backend``, closed at the end."""
    app = Machinery(Config(broker="memory://", result_backend="memory://"))
    app.backend = backend  # type: ignore[assignment]
    writer = StateWriter(app)
    try:
        yield writer
    finally:
        writer.close()


def _written(backend: _Recording) -> list[tuple[str, State]]:
    return [(s.task_uuid, s.state) for batch in backend.batches for s in batch]


def test_the_writer_stores_only_the_last_state_of_a_task_queued_together() -> None:
    backend = _Recording()
    with _writing(backend) as writer:
        writer.put_state(TaskState("first", State.RECEIVED, task_name="add"))
        assert backend.entered.wait(5)  # the writer holds the first batch: the rest queue up behind it
        writer.put_states(_states(("a", State.RECEIVED), ("b", State.RECEIVED)))
        writer.put_state(TaskState("a", State.STARTED, task_name="add"))
        done = threading.Event()
        writer.put_final(TaskState("a", State.SUCCESS, task_name="add"), None, done.set)
        backend.release.set()
        assert done.wait(5)
    assert _written(backend) == [("first", State.RECEIVED), ("b", State.RECEIVED), ("a", State.SUCCESS)]


class _Threads(_Recording):
    """Records which thread stored each batch."""

    def __init__(self) -> None:
        super().__init__()
        self.release.set()
        self.threads: list[str] = []

    def set_states(self, states: Sequence[TaskState]) -> None:
        self.threads.append(threading.current_thread().name)
        super().set_states(states)


def test_a_lone_task_stores_its_result_in_its_own_thread_after_what_was_queued() -> None:
    backend = _Threads()
    with _writing(backend) as writer:
        writer.put_state(TaskState("a", State.STARTED, task_name="add"))
        done = threading.Event()
        writer.put_final(TaskState("a", State.SUCCESS, task_name="add"), None, done.set, inline=True)
        assert done.is_set()  # stored before put_final returned
    assert _written(backend)[-1] == ("a", State.SUCCESS)
    assert backend.threads[-1] == threading.current_thread().name


def test_inline_waits_its_turn_while_the_writer_flushes() -> None:
    backend = _Recording()
    with _writing(backend) as writer:
        writer.put_state(TaskState("first", State.RECEIVED, task_name="add"))
        assert backend.entered.wait(5)  # the writer is flushing: an inline put queues behind it
        done = threading.Event()
        writer.put_final(TaskState("a", State.SUCCESS, task_name="add"), None, done.set, inline=True)
        assert not done.is_set()
        backend.release.set()
        assert done.wait(5)
    assert _written(backend) == [("first", State.RECEIVED), ("a", State.SUCCESS)]


class _Claimable:
    """The worker's tracked delivery, as the writer sees it: ``claim()`` once, then ``delivery``."""

    def __init__(self, delivery: object) -> None:
        self.delivery = delivery
        self.claimed = False

    def claim(self) -> bool:
        first, self.claimed = not self.claimed, True
        return first


def _sqlite_app(tmp_path: Path) -> Machinery:
    url = f"sqlite:///{tmp_path}/w.db"
    return Machinery(Config(broker=url, result_backend=url))


def _finish_one(app: Machinery) -> str:
    """Lease one message, hand its SUCCESS to a writer with the ack, close the writer; the task's uuid."""
    app.broker.publish(Signature(name="add", uuid="t1"))
    (delivery,) = app.broker.consume("machinery_tasks", 1, 1.0)
    writer = StateWriter(app)
    writer.put_final(TaskState("t1", State.SUCCESS, task_name="add"), _Claimable(delivery), done=lambda: None)
    writer.close()
    return "t1"


def test_sqlite_stores_the_states_and_acks_in_one_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _sqlite_app(tmp_path)
    calls: list[int] = []
    combined = app.broker.ack_with_states  # type: ignore[attr-defined]

    def counting(deliveries: Sequence[object], states: Sequence[TaskState], backend: object) -> bool:
        calls.append(len(deliveries))
        return bool(combined(deliveries, states, backend))

    monkeypatch.setattr(app.broker, "ack_with_states", counting)
    uuid = _finish_one(app)
    state = app.backend.get_state(uuid)
    assert calls == [1] and state is not None and state.state is State.SUCCESS
    assert app.broker.consume("machinery_tasks", 1, 0.0) == [], "the message was not acked"
    app.close()


def test_a_failed_combined_write_falls_back_to_store_then_ack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _sqlite_app(tmp_path)

    def failing(deliveries: Sequence[object], states: Sequence[TaskState], backend: object) -> bool:
        raise BrokerError("disk I/O error")

    monkeypatch.setattr(app.broker, "ack_with_states", failing)
    uuid = _finish_one(app)
    state = app.backend.get_state(uuid)
    assert state is not None and state.state is State.SUCCESS and state.created_at is not None
    assert app.broker.consume("machinery_tasks", 1, 0.0) == [], "the message was not acked"
    app.close()
