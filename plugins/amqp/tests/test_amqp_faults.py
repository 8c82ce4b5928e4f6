"""Fault tests: a worker killed with tasks STARTED, and RabbitMQ restarted mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
from amqp_apps import make_app, read_log
from amqp_testlib import SERVICES, Admin, Names

from machinery import AsyncResult, Machinery, ResultTimeoutError, State
from machinery.testing import server_unavailable
from machinery_amqp import AMQPBroker

pytestmark = [pytest.mark.services, pytest.mark.slow]
HERE = Path(__file__).resolve().parent


def start_worker(
    amqp_url: str, names: Names, runlog: Path, concurrency: int, **more: object
) -> subprocess.Popen[str]:
    settings = {
        "broker": amqp_url,
        "backend": amqp_url,
        "suffix": names.suffix,
        "runlog": str(runlog),
        "concurrency": concurrency,
        **more,
    }
    env = {**os.environ, "AMQP_TEST_APP": json.dumps(settings), "PYTHONPATH": str(HERE)}
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "amqp_apps.py")], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def wait_for(probe, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_sigkill_with_tasks_started_redelivers_each_once(
    amqp_url: str, names: Names, admin: Admin, tmp_path: Path
) -> None:
    runlog = tmp_path / "runs.log"
    app = make_app(amqp_url, amqp_url, names.suffix)
    slow = app.get_task("slow")
    first = start_worker(amqp_url, names, runlog, concurrency=4)
    second: subprocess.Popen[str] | None = None
    try:
        results = [app.send_task(slow.s(n, 2.0)) for n in range(8)]
        wait_for(lambda: len(read_log(str(runlog))) >= 4, 30, "4 tasks STARTED in the first worker")
        started = [n for event, n, pid in read_log(str(runlog)) if event == "start" and pid == first.pid]
        assert len(started) == 4  # prefetch = concurrency: nothing more left RabbitMQ
        # The state writer stores STARTED a moment after the body logs its start: wait for it.
        for n in started:
            wait_for(lambda n=n: results[n].state in (State.STARTED, State.RECEIVED), 5, f"task {n} STARTED")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = start_worker(amqp_url, names, runlog, concurrency=8)
        assert sorted(r.get(timeout=60) for r in results) == list(range(8))
        log = read_log(str(runlog))
        done = Counter(n for event, n, _ in log if event == "done")
        assert done == Counter(range(8))  # every task finished exactly once
        assert all(pid != first.pid for event, _, pid in log if event == "done")
        restarted = Counter(n for event, n, _ in log if event == "start")
        assert sorted(n for n, c in restarted.items() if c == 2) == sorted(started)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        app.close()


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_a_message_that_kills_every_worker_is_dead_lettered_after_max_deliveries(
    amqp_url: str, names: Names, admin: Admin, tmp_path: Path, queue_type: str
) -> None:
    """Issue 16: every worker that takes the message dies (os._exit, as an OOM kill would). After
    worker.max_deliveries (3) crashes the next delivery ends it FAILURE + dead letter, the body having
    run 3 times. A classic queue only flags redeliveries (the worker carries the count in a header of a
    fresh copy); a quorum queue counts them itself (x-delivery-count)."""
    runlog = tmp_path / "runs.log"
    queue_args = {"x-queue-type": "quorum"} if queue_type == "quorum" else {}
    app = make_app(amqp_url, amqp_url, names.suffix, queue_args=queue_args, max_deliveries=3)
    result = app.send_task(app.get_task("crash").s(7))
    crashes = 0
    worker: subprocess.Popen[str] | None = None
    try:
        while not result.state.is_completed:
            assert crashes < 6, "six workers died: the message was never given up"
            worker = start_worker(amqp_url, names, runlog, 1, queue_args=queue_args, max_deliveries=3)
            wait_for(
                partial(lambda w: w.poll() is not None or result.state.is_completed, worker),
                30,
                "the worker to crash or the message to be given up",
            )
            if worker.poll() is not None:
                assert worker.returncode == 3, f"the worker exited {worker.returncode}, not by the task"
                crashes += 1
        state = result.wait_state(10)
        assert crashes == 3
        assert state.state is State.FAILURE
        assert state.error.startswith("gave up after 4 deliveries (worker.max_deliveries=3)"), state.error
        assert [event for event, _, _ in read_log(str(runlog))] == ["crash"] * 3
        broker = app.broker
        assert isinstance(broker, AMQPBroker)
        # FAILURE is stored first, then the message is dead-lettered
        wait_for(lambda: broker.dead_letters(names.queue), 10, "the message in the dead-letter queue")
        [dead] = broker.dead_letters(names.queue)
        assert "gave up after 4 deliveries" in dead.reason
        # the count RabbitMQ kept: a quorum queue's; a classic queue keeps none (the copy is new)
        assert dead.delivery_count == (4 if queue_type == "quorum" else 1)
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
        app.close()


def restart_rabbitmq() -> None:
    if "rabbitmq" not in os.environ.get("MACHINERY_SERVICES", "").split():
        server_unavailable("RabbitMQ is not managed by scripts/services here (MACHINERY_SERVICES)")
    subprocess.run([str(SERVICES), "restart", "rabbitmq"], check=True, timeout=180, capture_output=True)


def results_within(results: list[AsyncResult], timeout: float) -> list[int]:
    """Every result, waiting ``timeout`` seconds in all; fails naming the tasks still unfinished."""
    deadline = time.monotonic() + timeout
    values, unfinished = [], []
    for r in results:
        try:
            values.append(r.get(timeout=max(0.5, deadline - time.monotonic())))
        except ResultTimeoutError:
            unfinished.append(f"{r.uuid} ({r.state.name})")
    assert not unfinished, f"{len(unfinished)} not finished: {unfinished}"
    return values


def send_delayed_and_close(amqp_url: str, names: Names, app: Machinery) -> list[AsyncResult]:
    """Send 8 tasks due 0.5 to 4 s from now (while the restart stops RabbitMQ's queues) from a
    producer of their own, closed at once: nobody who remembers them survives the restart."""
    producer = make_app(amqp_url, amqp_url, names.suffix)
    try:
        now = datetime.now(UTC)
        sent = []
        for i in range(8):
            delayed = producer.get_task("slow").s(300 + i, 0.1)
            delayed.eta = now + timedelta(seconds=0.5 + i / 2)
            delayed.uuid = f"delayed_{300 + i}_{names.suffix}"
            sent.append(producer.send_task(delayed).uuid)
    finally:
        producer.close()
    return [AsyncResult(app, uuid) for uuid in sent]


def test_rabbitmq_restart_mid_run_every_task_completes(amqp_url: str, names: Names, admin: Admin) -> None:
    """#150/#411/#427: producer and consumer reconnect by themselves; nothing sent is lost. Tasks
    delayed to fall due while RabbitMQ stops its queues still run although the process that sent
    them closed before the restart (a classic delay queue dead-letters at most once and could drop
    them; the quorum delay queues dead-letter at least once)."""
    if "rabbitmq" not in os.environ.get("MACHINERY_SERVICES", "").split():
        restart_rabbitmq()  # skips (or fails in CI) with the reason
    app = make_app(amqp_url, amqp_url, names.suffix)
    slow = app.get_task("slow")
    worker = app.worker(concurrency=4)
    thread = worker.launch_async()
    results: list[AsyncResult] = []
    errors: list[BaseException] = []
    try:
        results += [app.send_task(slow.s(n, 0.3)) for n in range(12)]
        wait_for(lambda: results[0].state is not State.PENDING, 20, "the worker to start")

        def send_during_restart() -> None:
            try:
                for n in range(100, 106):
                    results.append(app.send_task(slow.s(n, 0.1)))
                    time.sleep(0.5)
            except BaseException as exc:  # reported below
                errors.append(exc)

        sender = threading.Thread(target=send_during_restart)
        results += send_delayed_and_close(amqp_url, names, app)
        sender.start()
        restart_rabbitmq()
        sender.join(60)
        results += [app.send_task(slow.s(n, 0.1)) for n in range(200, 206)]
        assert errors == []
        values = sorted(results_within(results, 120))
        assert values == sorted([*range(12), *range(100, 106), *range(200, 206), *range(300, 308)])
    finally:
        worker.quit()
        thread.join(30)
        app.close()
    assert not thread.is_alive()
