"""Worker behaviour on memory:// (retries, handlers, limits, bad input, shutdown)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from machinery import (
    AsyncResult,
    Machinery,
    Retry,
    Signature,
    State,
    TaskError,
    TimeLimitExceeded,
    current_signature,
)
from machinery.transports.memory.broker import MemoryBroker
from machinery.worker import Worker


@pytest.fixture
def started(app: Machinery) -> Iterator[Worker]:
    worker = app.worker("w", concurrency=4)
    thread = worker.launch_async()
    yield worker
    worker.quit()
    thread.join(10)
    assert not thread.is_alive()


def make_flaky(app: Machinery, failures: int) -> list[int]:
    """A task that fails ``failures`` times, then succeeds; returns its run log."""
    runs: list[int] = []

    @app.task
    def flaky() -> int:
        runs.append(1)
        if len(runs) <= failures:
            raise ValueError(f"failure {len(runs)}")
        return len(runs)

    return runs


def test_retry_count_exact_runs(app: Machinery, started: Worker) -> None:
    runs = make_flaky(app, failures=2)
    result = app.send_task(Signature("flaky", retry_count=3))
    assert result.get(timeout=15) == 3
    assert len(runs) == 3


def test_retries_exhausted_fail_with_task_error(app: Machinery, started: Worker) -> None:
    runs = make_flaky(app, failures=5)
    result = app.send_task(Signature("flaky", retry_count=1))
    with pytest.raises(TaskError, match="^failure 2$"):
        result.get(timeout=15)
    assert len(runs) == 2


def test_retry_later_has_its_own_budget_not_retry_count(app: Machinery, started: Worker) -> None:
    """Go code loops on ErrRetryTaskLater until a resource is ready: that must work with the default
    retry_count=0, and stop at the retry-later budget (never unbounded, Go #640)."""
    seen: list[tuple[int, str]] = []

    @app.task
    def until_ready() -> str:
        sig = current_signature()
        assert sig is not None
        seen.append((sig.retry_count, str(sig.headers.get("machinery-retry-later", ""))))
        if len(seen) < 4:
            raise Retry(countdown=0.01)
        return "ready"

    assert app.send_task(until_ready.s()).get(timeout=10) == "ready"
    assert seen == [(0, ""), (0, "1"), (0, "2"), (0, "3")], "retry_count must stay untouched"

    @app.task
    def never_ready() -> None:
        raise Retry(countdown=0.01, message="still busy", max_retries=2)

    with pytest.raises(TaskError, match="^still busy$"):
        app.send_task(never_ready.s()).get(timeout=10)

    app.config.worker.retry_later_limit = 3
    runs: list[int] = []

    @app.task
    def default_budget() -> None:
        runs.append(1)
        raise Retry(countdown=0.01)

    with pytest.raises(TaskError, match=r"^retry-later limit reached \(3\)$"):
        app.send_task(default_budget.s()).get(timeout=10)
    assert len(runs) == 4  # the first run and 3 retries-later


def test_handlers_are_called(app: Machinery) -> None:
    events: list[str] = []
    worker = app.worker("h", concurrency=1)
    worker.set_pre_task_handler(lambda sig: events.append(f"pre:{sig.name}"))
    worker.set_post_task_handler(lambda sig: events.append(f"post:{sig.name}"))
    worker.set_error_handler(lambda exc: events.append(f"error:{exc}"))

    @app.task
    def boom() -> None:
        raise RuntimeError("bad")

    thread = worker.launch_async()
    with pytest.raises(TaskError):
        app.send_task(boom.s()).get(timeout=5)
    worker.quit()
    thread.join(5)
    assert events == ["pre:boom", "error:bad", "post:boom"]


def test_pre_consume_handler_pauses_without_busy_loop(app: Machinery) -> None:
    calls: list[float] = []
    allowed = threading.Event()

    def gate(worker: Worker) -> bool:
        calls.append(time.monotonic())
        return allowed.is_set()

    @app.task
    def ping() -> str:
        return "pong"

    worker = app.worker("g", concurrency=1)
    worker.set_pre_consume_handler(gate)
    thread = worker.launch_async()
    result = app.send_task(ping.s())
    time.sleep(1.5)  # measuring the pause itself: how often the gate is asked while closed
    assert result.state == State.PENDING
    assert len(calls) <= 1.5 / app.config.worker.poll_timeout + 2  # asked once per poll_timeout
    allowed.set()
    assert result.get(timeout=5) == "pong"
    worker.quit()
    thread.join(5)


def test_async_task(app: Machinery, started: Worker) -> None:
    @app.task
    async def sleepy_add(a: int, b: int) -> int:
        await asyncio.sleep(0.01)
        return a + b

    assert app.send_task(sleepy_add.s(2, 3)).get(timeout=5) == 5


def test_soft_time_limit_raises_inside_the_task(app: Machinery, started: Worker) -> None:
    caught = threading.Event()

    @app.task(soft_time_limit=0.2)
    def slow() -> None:
        try:
            for _ in range(100):
                time.sleep(0.05)
        except TimeLimitExceeded:
            caught.set()
            raise

    with pytest.raises(TaskError, match="time limit exceeded"):
        app.send_task(slow.s()).get(timeout=5)
    assert caught.is_set()


def test_hard_time_limit_fails_and_discards_late_result(app: Machinery, started: Worker) -> None:
    release = threading.Event()

    @app.task(time_limit=0.2)
    def stuck() -> str:
        release.wait(3)  # C-level wait: the soft interrupt cannot reach it
        return "late"

    result = app.send_task(stuck.s())
    with pytest.raises(TaskError, match="time limit exceeded"):
        result.get(timeout=5)
    release.set()
    time.sleep(0.2)  # give the late return a chance to (wrongly) overwrite the state
    assert app.backend.get_state(result.uuid).state == State.FAILURE  # type: ignore[union-attr]


def test_async_soft_time_limit(app: Machinery, started: Worker) -> None:
    @app.task(soft_time_limit=0.1)
    async def forever() -> None:
        await asyncio.sleep(10)

    with pytest.raises(TaskError, match="time limit exceeded"):
        app.send_task(forever.s()).get(timeout=5)


def test_unregistered_task_fails_after_bounded_requeues(app: Machinery, started: Worker) -> None:
    app.config.worker.unregistered_requeue_limit = 3
    app.config.worker.unregistered_requeue_seconds = 0.2
    result = app.send_task(Signature("nobody_knows"))
    with pytest.raises(TaskError, match="^task 'nobody_knows' is not registered$"):
        result.get(timeout=10)


def test_ignored_unregistered_task_is_dropped(app: Machinery, started: Worker) -> None:
    sig = Signature("nobody_knows", ignore_when_task_not_registered=True)
    result = app.send_task(sig)
    deadline = time.monotonic() + 5
    broker = app.broker
    assert isinstance(broker, MemoryBroker)
    while broker.pending(app.config.default_queue) and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(TimeoutError):
        result.get(timeout=0.3)


def test_malformed_message_fails_and_worker_keeps_running(app: Machinery, started: Worker) -> None:
    broker = app.broker
    assert isinstance(broker, MemoryBroker)
    queue = app.config.default_queue
    broker.publish_raw(queue, b'{"UUID": "task_bad", "Name": "add", "Args": "not a list"}')
    broker.publish_raw(queue, b"\xff not json")

    @app.task
    def add(*args: int) -> int:
        return sum(args)

    with pytest.raises(TaskError, match="malformed message"):
        AsyncResult(app, "task_bad").get(timeout=5)
    assert app.send_task(add.s(1, 2)).get(timeout=5) == 3
    deadline = time.monotonic() + 5
    while len(broker.dead_letters(queue)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    letters = broker.dead_letters(queue)
    assert len(letters) == 2
    assert all(letter.reason.startswith("malformed message: ") for letter in letters), letters


def test_wrong_argument_count_is_a_clear_failure(app: Machinery, started: Worker) -> None:
    @app.task
    def one(x: int) -> int:
        return x

    with pytest.raises(TaskError, match="positional argument"):
        app.send_task(one.s(1, 2)).get(timeout=5)


def test_quit_race(app: Machinery) -> None:
    for _ in range(3):
        worker = app.worker("race", concurrency=2)
        start = time.monotonic()
        thread = worker.launch_async()
        worker.quit()
        thread.join(3)
        assert not thread.is_alive()
        assert time.monotonic() - start < 2.0


def test_never_holds_more_than_free_slots(app: Machinery) -> None:
    gate = threading.Event()
    running = threading.Semaphore(0)

    @app.task
    def hold() -> None:
        running.release()
        gate.wait(5)

    worker = app.worker("slots", concurrency=2)
    thread = worker.launch_async()
    app.send_tasks([hold.s() for _ in range(5)])
    assert running.acquire(timeout=5) and running.acquire(timeout=5)
    broker = app.broker
    assert isinstance(broker, MemoryBroker)
    assert len(broker.pending(app.config.default_queue)) == 3  # the other 3 were never fetched
    gate.set()
    worker.quit()
    thread.join(10)


def test_graceful_shutdown_returns_unfinished_tasks(app: Machinery) -> None:
    app.config.worker.shutdown_grace = 0.2
    started = threading.Event()
    release = threading.Event()

    @app.task
    def long_one() -> str:
        started.set()
        release.wait(5)
        return "done"

    worker = app.worker("drain", concurrency=1)
    thread = worker.launch_async()
    result = app.send_task(long_one.s())
    assert started.wait(5)
    worker.quit()
    thread.join(5)
    assert not thread.is_alive()
    broker = app.broker
    assert isinstance(broker, MemoryBroker)
    assert [s.uuid for s in broker.pending(app.config.default_queue)] == [result.uuid]
    release.set()


def test_process_pool_runs_tasks_and_kills_on_hard_limit(app: Machinery) -> None:
    import os

    @app.task
    def whoami() -> int:
        return os.getpid()

    @app.task(time_limit=0.5)
    def stuck() -> None:
        time.sleep(30)

    @app.task(soft_time_limit=0.2)
    def soft() -> str:
        try:
            time.sleep(30)
        except TimeLimitExceeded:
            return "stopped in time"
        return "not stopped"

    worker = app.worker("proc", concurrency=2, pool="process")
    thread = worker.launch_async()
    try:
        assert app.send_task(whoami.s()).get(timeout=10) != os.getpid()
        with pytest.raises(TaskError, match="time limit exceeded"):
            app.send_task(stuck.s()).get(timeout=10)
        assert app.send_task(soft.s()).get(timeout=10) == "stopped in time"
        assert app.send_task(whoami.s()).get(timeout=10) != os.getpid()  # the pool recovered
    finally:
        worker.quit()
        thread.join(10)
