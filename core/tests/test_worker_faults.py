"""Worker hardening (issue 16), one fault per test, in process: a backend or broker that fails on
cue, tasks that misbehave, and the resource bounds of a worker that starts and stops."""

from __future__ import annotations

import gc
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from machinery import Config, Machinery, Signature, State, TaskError
from machinery.backend import Backend
from machinery.broker import Delivery
from machinery.errors import BackendError, BrokerError, MessageError
from machinery.signature import TaskState, new_uuid, now_utc
from machinery.testing._util import eventually
from machinery.transports.memory.backend import MemoryBackend
from machinery.transports.memory.broker import MemoryBroker
from machinery.transports.sqlite.broker import SQLiteBroker
from machinery.worker import Worker
from machinery.worker.timelimit import TimeLimits
from machinery.worker.worker import DELIVERIES

# -- fakes that fail on cue --


class FlakyBackend:
    """A memory backend whose writes fail while ``down`` is set (transient), or for the states
    ``refuse(state)`` picks (permanent, like a store's size limit)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.down = threading.Event()
        self.refuse: Callable[[TaskState], bool] = lambda state: False
        self.stored: list[tuple[float, TaskState]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _check(self, states: Sequence[TaskState]) -> None:
        if self.down.is_set():
            raise BackendError("result store unreachable (on cue)")
        for state in states:
            if self.refuse(state):
                raise MessageError(f"state of {state.task_uuid} refused (on cue)")

    def set_state(self, state: TaskState) -> None:
        self.set_states([state])

    def set_states(self, states: Sequence[TaskState]) -> None:
        self._check(states)
        self.inner.set_states(states)
        now = time.monotonic()
        self.stored.extend((now, s) for s in states)


class FlakyBroker:
    """A memory broker whose publishes of task ``fail_name`` fail ``fail_times`` times, and that
    records when each delivery is acked."""

    def __init__(self, inner: MemoryBroker) -> None:
        self.inner = inner
        self.fail_name = ""
        self.fail_times = 0
        self.acked: dict[str, float] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def publish(self, signature: Signature) -> None:
        if signature.name == self.fail_name and self.fail_times > 0:
            self.fail_times -= 1
            raise BrokerError("publish failed (on cue)")
        self.inner.publish(signature)

    def consume(self, queue: str, max_messages: int, timeout: float) -> list[Delivery]:
        deliveries = self.inner.consume(queue, max_messages, timeout)
        for delivery in deliveries:
            original = delivery.ack
            uuid = delivery.signature.uuid if delivery.signature else ""

            def ack(original: Callable[[], None] = original, uuid: str = uuid) -> None:
                self.acked[uuid] = time.monotonic()
                original()

            delivery.ack = ack  # type: ignore[method-assign]
        return deliveries


@pytest.fixture
def flaky(memory_url: str) -> Iterator[tuple[Machinery, FlakyBroker, FlakyBackend]]:
    config = Config(broker=memory_url, result_backend=memory_url)
    config.worker.shutdown_grace = 5.0
    config.worker.poll_timeout = 0.1
    config.worker.max_deliveries = 3
    broker = FlakyBroker(MemoryBroker(config, memory_url.removeprefix("memory://")))
    backend = FlakyBackend(MemoryBackend(config, memory_url.removeprefix("memory://")))
    app = Machinery(config, broker=broker, backend=backend)  # type: ignore[arg-type]
    yield app, broker, backend
    backend.down.clear()
    app.close()


def launch(app: Machinery, concurrency: int = 2, **kwargs: Any) -> tuple[Worker, threading.Thread]:
    worker = app.worker("faults", concurrency=concurrency, **kwargs)
    thread = worker.launch_async()
    deadline = time.monotonic() + 5
    while not worker.running and time.monotonic() < deadline:
        time.sleep(0.01)
    return worker, thread


@pytest.fixture
def running(flaky: tuple[Machinery, FlakyBroker, FlakyBackend]) -> Iterator[Worker]:
    worker, thread = launch(flaky[0])
    yield worker
    flaky[2].down.clear()
    worker.quit()
    thread.join(15)
    assert not thread.is_alive()


def dead_lettered(broker: Any, queue: str, uuid: str, timeout: float = 10.0) -> list[Any]:
    """The dead letters of ``uuid`` on ``queue``, once there are any. The worker stores FAILURE
    before it settles the message (a failed store keeps it), so the letter can come a moment later."""

    def letters() -> list[Any] | None:
        return [d for d in broker.dead_letters(queue) if uuid.encode() in d.body] or None

    return eventually(letters, timeout, f"task {uuid} in the dead-letter store")


def state_of(app: Machinery, uuid: str, timeout: float = 10.0) -> TaskState:
    deadline = time.monotonic() + timeout
    while True:
        state = app.backend.get_state(uuid)
        if state is not None and state.is_completed:
            return state
        assert time.monotonic() < deadline, f"task {uuid} did not end: {state}"
        time.sleep(0.01)


# -- results that cannot be encoded --


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_an_unencodable_result_is_a_failure_naming_its_type(app: Machinery, pool: str) -> None:
    runs: list[int] = []

    @app.task(name="x")
    def when() -> datetime:
        runs.append(1)
        return datetime(2025, 1, 1, tzinfo=UTC)

    worker, thread = launch(app, pool=pool)  # type: ignore[arg-type]
    try:
        with pytest.raises(TaskError) as info:
            app.send_task(Signature("x", retry_count=3)).get(timeout=15)
        assert str(info.value) == "result of task 'x' is not JSON-serialisable: datetime"
        assert app.send_task(Signature("x")).wait_state(15).state == State.FAILURE  # never retried
    finally:
        worker.quit()
        thread.join(15)
    if pool == "thread":
        assert len(runs) == 2


# -- the state writer: permanent and transient errors --


def test_a_state_the_store_refuses_ends_that_task_failure_and_the_rest_goes_on(
    flaky: tuple[Machinery, FlakyBroker, FlakyBackend], running: Worker
) -> None:
    app, _, backend = flaky

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    backend.refuse = lambda s: s.state == State.SUCCESS and s.results is not None and s.results[0].value == 13
    results = [app.send_task(Signature("add", args=[i, 3])) for i in range(20)]
    assert [state_of(app, r.uuid).state for r in results].count(State.SUCCESS) == 19
    refused = state_of(app, results[10].uuid)
    assert refused.state == State.FAILURE
    assert "could not be stored" in refused.error and "refused (on cue)" in refused.error


def test_a_task_whose_failure_cannot_be_stored_either_is_dead_lettered(
    flaky: tuple[Machinery, FlakyBroker, FlakyBackend], running: Worker
) -> None:
    app, broker, backend = flaky

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    doomed = Signature("add", args=[1, 1])
    backend.refuse = lambda s: s.task_uuid == doomed.uuid and s.state in (State.SUCCESS, State.FAILURE)
    app.send_task(doomed)
    assert app.send_task(Signature("add", args=[2, 2])).get(timeout=10) == 4

    dead_lettered(broker.inner, app.config.default_queue, doomed.uuid)


def test_a_store_outage_stops_leasing_and_loses_nothing(
    flaky: tuple[Machinery, FlakyBroker, FlakyBackend],
) -> None:
    app, _, backend = flaky
    ran: list[int] = []

    @app.task
    def count(n: int) -> int:
        ran.append(n)
        return n

    sent = [app.send_task(Signature("count", args=[n])) for n in range(30)]  # PENDING stored first
    backend.down.set()
    worker, thread = launch(app, concurrency=2)
    try:
        time.sleep(1.0)  # an outage: the worker must hold no more tasks than its 2 slots
        assert len(ran) <= 2, f"{len(ran)} tasks ran while their states could not be stored"
        backend.down.clear()
        assert [r.get(timeout=20) for r in sent] == list(range(30))
        assert sorted(ran) == list(range(30)), "every task ran exactly once"
    finally:
        backend.down.clear()
        worker.quit()
        thread.join(15)


# -- the delivery budget --


def test_an_error_in_the_worker_s_own_handling_uses_up_the_budget(
    flaky: tuple[Machinery, FlakyBroker, FlakyBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, broker, _ = flaky

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    worker, thread = launch(app)
    attempts: list[int] = []
    real_run = worker.runner.run

    def run(sig: Signature, redelivered: bool = False) -> Any:
        if sig.args and sig.args[0].value == 666:
            attempts.append(1)
            raise OverflowError("bookkeeping broke (on cue)")
        return real_run(sig, redelivered)

    monkeypatch.setattr(worker.runner, "run", run)
    try:
        doomed = app.send_task(Signature("add", args=[666, 1]))
        assert app.send_task(Signature("add", args=[1, 1])).get(timeout=10) == 2
        state = state_of(app, doomed.uuid, timeout=20)
        assert state.state == State.FAILURE
        assert "gave up after 3 deliveries" in state.error and "OverflowError" in state.error
        assert len(attempts) == 3
        assert dead_lettered(broker.inner, app.config.default_queue, doomed.uuid)
    finally:
        worker.quit()
        thread.join(15)


def test_crashes_while_holding_a_message_are_counted_by_sqlite_and_end_it(tmp_path: Path) -> None:
    """Five processes lease the message and die (os._exit) without settling it; the sixth
    delivery gives up: FAILURE + dead letter, and the task body never ran."""
    db = tmp_path / "crash.db"
    url = f"sqlite:///{db}?lease=0.3&renew=0.1"
    config = Config(broker=url, result_backend=url)
    config.worker.poll_timeout = 0.1
    app = Machinery(config)
    ran: list[int] = []

    @app.task
    def fatal() -> None:
        ran.append(1)

    result = app.send_task(Signature("fatal"))
    crash = (
        "import os, sys; from machinery.transports.sqlite.broker import SQLiteBroker; "
        f"b = SQLiteBroker({str(db)!r}, lease=0.3, renew=0.1); "
        f"d = b.consume({config.default_queue!r}, 1, 10); "
        "sys.stdout.write(str(len(d))); sys.stdout.flush(); os._exit(0)"
    )
    for _ in range(5):
        out = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True, timeout=60)
        assert out.stdout == "1", out.stderr
    worker, thread = launch(app)
    try:
        state = result.wait_state(15)
        assert state.state == State.FAILURE
        assert state.error.startswith("gave up after 6 deliveries (worker.max_deliveries=5)"), state.error
        assert ran == []
        broker = app.broker
        assert isinstance(broker, SQLiteBroker)
        [dead] = dead_lettered(broker, config.default_queue, result.uuid)
        assert dead.delivery_count == 6
    finally:
        worker.quit()
        thread.join(15)
        app.close()


class _FlaggedDelivery:
    """A delivery from a broker that flags redeliveries but does not count them (like Redis)."""

    def __init__(self, sig: Signature, redelivered: bool) -> None:
        self.signature = sig
        self.body = b""
        self.error = ""
        self.redelivered = redelivered


def test_a_redelivery_the_broker_only_flags_is_counted_and_carried_in_a_header() -> None:
    sig = Signature("add", headers={DELIVERIES: "2"})
    assert Worker._delivery_count(_FlaggedDelivery(sig, redelivered=False), sig) == (3, False)  # type: ignore[arg-type]
    assert Worker._delivery_count(_FlaggedDelivery(sig, redelivered=True), sig) == (4, True)  # type: ignore[arg-type]
    hostile = Signature("add", headers={DELIVERIES: "-7"})
    assert Worker._delivery_count(_FlaggedDelivery(hostile, False), hostile) == (1, False)  # type: ignore[arg-type]


def test_a_carried_count_keeps_the_message_eta(app: Machinery) -> None:
    """A redelivery the broker only flags is republished with its count, its ETA intact."""
    from machinery import codec

    worker = app.worker("carry", concurrency=1)
    later = datetime.fromtimestamp(time.time() + 3600, UTC).replace(microsecond=0)
    sig = Signature("add", eta=later, routing_key="q")
    delivery = _FlaggedDelivery(sig, redelivered=True)
    delivery.body = codec.encode_signature(sig)
    delivery.ack = lambda: None  # type: ignore[attr-defined]
    from machinery.worker.worker import _Tracked

    worker._process(_Tracked(delivery, "q"))  # type: ignore[arg-type]
    broker = app.broker
    assert isinstance(broker, MemoryBroker)
    [copy] = broker.delayed()
    assert copy.eta == later and copy.headers[DELIVERIES] == "1"


def test_planned_hops_use_no_delivery(
    flaky: tuple[Machinery, FlakyBroker, FlakyBackend], running: Worker
) -> None:
    """An ETA the broker did not honour (a raw message) and unregistered requeues hop many times
    with max_deliveries=3 and still end as they should."""
    app, broker, _ = flaky
    app.config.worker.max_deliveries = 1
    app.config.worker.unregistered_requeue_limit = 3
    app.config.worker.unregistered_requeue_seconds = 0.2
    ran: list[int] = []

    @app.task
    def later() -> int:
        ran.append(1)
        return 7

    early = Signature("later", eta=datetime.now(UTC).replace(microsecond=0))
    early.eta = datetime.fromtimestamp(time.time() + 0.5, UTC)
    from machinery import codec

    broker.inner.publish_raw(app.config.default_queue, codec.encode_signature(early))  # delivered at once
    assert app.backend.wait([early.uuid], 10)[early.uuid].state == State.SUCCESS
    assert ran == [1]
    missing = app.send_task(Signature("nobody_has_this"))
    with pytest.raises(TaskError, match="is not registered"):
        missing.get(timeout=15)


# -- chords --


def _chord_tasks(app: Machinery) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    @app.task
    def multiply(*values: int) -> int:
        product = 1
        for v in values:
            product *= v
        return product


def test_a_failed_callback_publish_is_retried(
    flaky: tuple[Machinery, FlakyBroker, FlakyBackend], running: Worker
) -> None:
    from machinery.workflow import Chord, Group

    app, broker, _ = flaky
    _chord_tasks(app)
    broker.fail_name, broker.fail_times = "multiply", 2
    chord = Chord(
        Group([Signature("add", args=[1, 1]), Signature("add", args=[2, 2])]), Signature("multiply")
    )
    assert app.send_chord(chord).get(timeout=15) == 8


def test_a_callback_that_cannot_be_published_fails_instead_of_hanging(
    flaky: tuple[Machinery, FlakyBroker, FlakyBackend], running: Worker
) -> None:
    from machinery.workflow import Chord, Group

    app, broker, _ = flaky
    _chord_tasks(app)
    broker.fail_name, broker.fail_times = "multiply", 1000
    chord = Chord(
        Group([Signature("add", args=[1, 1]), Signature("add", args=[2, 2])]), Signature("multiply")
    )
    with pytest.raises(TaskError, match="chord callback could not be published: publish failed"):
        app.send_chord(chord).get(timeout=20)


@pytest.mark.parametrize("pending_stored", [False, True])
def test_a_callback_lost_between_trigger_and_publish_is_sent_by_the_redelivered_member(
    flaky: tuple[Machinery, FlakyBroker, FlakyBackend],
    running: Worker,
    monkeypatch: pytest.MonkeyPatch,
    pending_stored: bool,
) -> None:
    """The worker that triggered the chord fails before publishing (as if it died there, before or
    after the callback's PENDING was stored): the member is delivered again, finds the chord
    triggered and the callback unsent, and sends it."""
    from machinery.worker import runner as runner_module
    from machinery.workflow import Chord, Group

    monkeypatch.setattr(runner_module, "RECOVERY_GRACE", 1.0)  # the recovery waits out a live trigger
    app, _, _ = flaky
    _chord_tasks(app)
    real = running.runner._publish_callback
    crashes: list[int] = []

    def publish_once_broken(callback: Signature) -> None:
        if not crashes:
            crashes.append(1)
            if pending_stored:
                app.backend.set_state(TaskState(callback.uuid, State.PENDING, task_name=callback.name))
            raise RuntimeError("the worker 'died' between trigger and publish (on cue)")
        real(callback)

    monkeypatch.setattr(running.runner, "_publish_callback", publish_once_broken)
    chord = Chord(
        Group([Signature("add", args=[1, 1]), Signature("add", args=[2, 2])]), Signature("multiply")
    )
    assert app.send_chord(chord).get(timeout=15) == 8
    assert crashes == [1]


def test_a_member_of_an_unknown_group_fails_with_that_reason(app: Machinery) -> None:
    runs: list[int] = []

    @app.task
    def member() -> int:
        runs.append(1)
        return 1

    worker, thread = launch(app)
    try:
        callback = Signature("member", uuid=new_uuid())
        sig = Signature("member", group_uuid="expired-group", group_task_count=2, chord_callback=callback)
        with pytest.raises(TaskError, match="chord group expired-group is unknown or expired"):
            app.send_task(sig).get(timeout=10)
        assert app.backend.get_state(callback.uuid).state == State.FAILURE  # type: ignore[union-attr]
        assert runs == [], "a member of an unknown group must not run"
    finally:
        worker.quit()
        thread.join(15)


# -- time limits --


def test_a_hard_limit_acks_only_after_failure_is_stored(
    flaky: tuple[Machinery, FlakyBroker, FlakyBackend], running: Worker
) -> None:
    app, broker, backend = flaky
    started = threading.Event()

    @app.task(time_limit=0.3)
    def stuck() -> None:
        started.set()
        backend.down.set()  # the store is down when the limit fires
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # Python code: the limit's exception lands here
            time.sleep(0.01)

    result = app.send_task(Signature("stuck"))
    assert started.wait(5)
    time.sleep(1.0)
    assert result.uuid not in broker.acked, "acked while its FAILURE was not stored"
    backend.down.clear()
    state = state_of(app, result.uuid)
    assert state.state == State.FAILURE and state.error == "time limit exceeded"
    deadline = time.monotonic() + 5
    while result.uuid not in broker.acked:
        assert time.monotonic() < deadline, "never acked"
        time.sleep(0.01)
    stored_at = min(t for t, s in backend.stored if s.task_uuid == result.uuid and s.state == State.FAILURE)
    assert stored_at <= broker.acked[result.uuid]


def test_the_on_error_callback_of_a_timed_out_task_is_published(app: Machinery) -> None:
    errors: list[str] = []
    got = threading.Event()

    @app.task(time_limit=0.2)
    def slow() -> None:
        time.sleep(1.5)  # in C: the limit fails the task at 0.2 s; the thread is back at 1.5 s

    @app.task
    def on_error(text: str) -> None:
        errors.append(text)
        got.set()

    worker, thread = launch(app)
    try:
        app.send_task(Signature("slow", on_error=[Signature("on_error")]))
        assert got.wait(10)
        assert errors == ["time limit exceeded"]
    finally:
        worker.quit()
        thread.join(15)


def test_the_watchdog_survives_an_action_that_raises() -> None:
    limits = TimeLimits()
    fired = threading.Event()

    def bad() -> None:
        raise RuntimeError("action failed (on cue)")

    def bad_exit() -> None:
        raise SystemExit(1)

    limits.schedule(0.01, bad)
    limits.schedule(0.02, bad_exit)
    limits.schedule(0.05, fired.set)
    try:
        assert fired.wait(5), "the watchdog died with the first failing action"
    finally:
        limits.close()


def test_the_watchdog_keeps_deadlines_not_signatures() -> None:
    limits = TimeLimits()
    sig = Signature("big", args=["x" * 10_000])
    ref = weakref.ref(sig)
    handles = [limits.schedule(3600, lambda s=sig: s.name) for _ in range(20_000)]  # type: ignore[misc]
    del sig
    for handle in handles:
        limits.cancel(handle)
    gc.collect()
    try:
        assert ref() is None, "a cancelled limit still holds its Signature"
        assert len(limits) == 0
        assert len(limits._heap) <= 64, "cancelled deadlines pile up in the heap"
    finally:
        limits.close()


# -- BaseException in tasks and handlers --


def test_system_exit_in_a_task_fails_it_and_keeps_every_slot(
    app: Machinery, caplog: pytest.LogCaptureFixture
) -> None:
    arrived: list[int] = []
    lock = threading.Lock()

    @app.task
    def leave() -> None:
        sys.exit(3)

    @app.task
    def interrupt() -> None:
        raise KeyboardInterrupt

    @app.task
    def rendezvous() -> bool:
        with lock:
            arrived.append(1)
        deadline = time.monotonic() + 5
        while len(arrived) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(arrived) >= 2

    worker, thread = launch(app, concurrency=2)
    worker.set_error_handler(lambda exc: (_ for _ in ()).throw(SystemExit("handler exits")))
    try:
        with caplog.at_level(logging.ERROR, logger="machinery"):
            for name in ["leave", "interrupt"] * 3:
                with pytest.raises(TaskError, match="SystemExit|KeyboardInterrupt"):
                    app.send_task(Signature(name)).get(timeout=10)
        assert "raised SystemExit; it failed, the worker keeps its slot" in caplog.text
        pair = [app.send_task(Signature("rendezvous")) for _ in range(2)]
        assert [r.get(timeout=10) for r in pair] == [True, True], "a slot was lost"
    finally:
        worker.quit()
        thread.join(15)


# -- bounded resources --


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_ten_start_stop_cycles_return_threads_and_fds_to_the_baseline(
    kind: str, memory_url: str, tmp_path: Path
) -> None:
    url = memory_url if kind == "memory" else f"sqlite:///{tmp_path / 'cycles.db'}"
    config = Config(broker=url, result_backend=url)
    config.worker.poll_timeout = 0.05
    app = Machinery(config)

    @app.task
    async def coro() -> int:
        return 1

    @app.task(time_limit=60)
    def limited() -> int:
        return 2

    def cycle() -> None:
        worker, thread = launch(app)
        assert app.send_task(Signature("coro")).get(timeout=10) == 1
        assert app.send_task(Signature("limited")).get(timeout=10) == 2
        worker.quit()
        thread.join(15)
        assert not thread.is_alive()

    counts = []
    for _ in range(10):
        cycle()
        counts.append((threading.active_count(), _open_fds()))
    # sqlite keeps one connection per thread until the next connection is opened (then it closes
    # those of ended threads), so the fd count may wobble by a connection: it must not grow
    threads, fds = zip(*counts, strict=True)
    assert len(set(threads)) == 1, f"threads per cycle: {threads}"
    assert max(fds[3:]) <= max(fds[:3]), f"open fds per cycle: {fds}"
    app.close()


def test_memory_results_expire_and_are_dropped(memory_url: str) -> None:
    config = Config(broker=memory_url, result_backend=memory_url, results_expire_in=1)
    backend = MemoryBackend(config, memory_url.removeprefix("memory://"))
    backend.set_state(TaskState("old", State.SUCCESS))
    time.sleep(1.1)
    backend.set_state(TaskState("new", State.SUCCESS))
    assert backend.get_state("old") is None
    assert set(backend._store.states) == {"new"}, "an expired result still takes memory"


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_dead_letters_expire(kind: str, memory_url: str, tmp_path: Path) -> None:
    url = memory_url if kind == "memory" else f"sqlite:///{tmp_path / 'dl.db'}"
    config = Config(broker=url, result_backend=url, dead_letter_expire_in=1)
    app = Machinery(config)
    broker: Any = app.broker
    try:
        for n in range(2):
            app.send_task(Signature("x", args=[n]))
            [delivery] = broker.consume(config.default_queue, 1, 5)
            delivery.nack(requeue=False)
            if n == 0:
                time.sleep(1.2)
        [left] = broker.dead_letters(config.default_queue)
        body = getattr(left, "body", left)
        assert b'"Value":1' in body
    finally:
        app.close()


# -- the process pool --

_POOL_WORKER = """
import os, sys, time
from machinery import Config, Machinery
config = Config(broker=sys.argv[1], result_backend=sys.argv[1])
app = Machinery(config)

@app.task
def linger(path: str) -> None:
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(60)

app.worker("pool", concurrency=1, pool="process").launch()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_a_process_pool_child_dies_with_its_worker(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'pool.db'}"
    pid_file = tmp_path / "child.pid"
    script = tmp_path / "pool_worker.py"
    script.write_text(_POOL_WORKER)
    worker = subprocess.Popen([sys.executable, str(script), url])
    app = Machinery(Config(broker=url, result_backend=url))
    try:
        app.send_task(Signature("linger", args=[str(pid_file)]))
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text()):
            assert time.monotonic() < deadline, "the task never started"
            time.sleep(0.05)
        child = int(pid_file.read_text())
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        deadline = time.monotonic() + 5
        while _alive(child):
            assert time.monotonic() < deadline, "the pool's child outlived its worker"
            time.sleep(0.02)
    finally:
        if worker.poll() is None:
            worker.kill()
        app.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (dead, not yet reaped by init) counts as dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_chord_recovery_sends_a_callback_once_with_a_shared_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A redelivered member that finds the chord triggered sends the callback only when it was never
    sent: the sender marks it in the (shared) lock, so a callback queued as PENDING is not sent twice,
    and of several recoveries of an unsent one, one sends it."""
    from machinery.worker import runner as runner_module
    from machinery.worker.runner import TaskRunner

    monkeypatch.setattr(runner_module, "RECOVERY_GRACE", 0.2)  # the published PENDING is young
    monkeypatch.setattr(runner_module, "RECOVERY_POLL", 0.05)

    url = f"sqlite:///{tmp_path / 'chord.db'}"
    app = Machinery(Config(broker=url, result_backend=url))
    sent: list[str] = []
    app.set_pre_publish_handler(lambda sig: sent.append(sig.uuid))
    runner = TaskRunner(app)
    member = TaskState("m1", State.SUCCESS, task_name="add", results=[])

    def member_of(group: str, callback: Signature) -> Signature:
        return Signature("add", uuid="m1", group_uuid=group, group_task_count=1, chord_callback=callback)

    published = Signature("multiply", uuid="cb-published")
    runner._fire(member_of("g-published", published), [member])  # the trigger winner: publish, mark
    assert sent == ["cb-published"]
    runner._recover_callback(member_of("g-published", published), [member])
    assert sent == ["cb-published"], "a PENDING callback that was published and marked is not sent again"

    lost = Signature("multiply", uuid="cb-lost")
    app.backend.set_state(TaskState("cb-lost", State.PENDING, task_name="multiply"))  # died before publish
    runner._recover_callback(member_of("g-lost", lost), [member])
    runner._recover_callback(member_of("g-lost", lost), [member])
    assert sent == ["cb-published", "cb-lost"], "an unsent callback is sent by exactly one recovery"
    app.close()


class _KeepsFailures:
    """A delivery with ``ack_failure`` (``SupportsAckFailure``, as SQS's StopTaskDeletionOnError): records
    which way the worker settled it."""

    def __init__(self, inner: Delivery, settled: dict[str, str]) -> None:
        self.inner = inner
        self.signature = inner.signature
        self.body = inner.body
        self.error = inner.error
        self.redelivered = inner.redelivered
        self.settled = settled

    def _uuid(self) -> str:
        return self.signature.uuid if self.signature else ""

    def ack(self) -> None:
        self.settled[self._uuid()] = "ack"
        self.inner.ack()

    def ack_failure(self) -> None:
        self.settled[self._uuid()] = "ack_failure"
        self.inner.ack()

    def nack(self, requeue: bool = True, delay: float | None = None, reason: str = "") -> None:
        self.inner.nack(requeue=requeue, delay=delay, reason=reason)

    def extend(self, seconds: float) -> None:
        self.inner.extend(seconds)


class _KeepingBroker:
    def __init__(self, inner: MemoryBroker) -> None:
        self.inner = inner
        self.settled: dict[str, str] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def consume(self, queue: str, max_messages: int, timeout: float) -> list[Delivery]:
        return [_KeepsFailures(d, self.settled) for d in self.inner.consume(queue, max_messages, timeout)]

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            delivery.ack()


def test_a_failed_task_is_settled_by_ack_failure_where_the_delivery_has_it(memory_url: str) -> None:
    """The worker stores FAILURE, then calls ``ack_failure()`` (never ``ack()``) on a delivery that
    supports it; a task that succeeds is acked as ever."""
    config = Config(broker=memory_url, result_backend=memory_url)
    config.worker.poll_timeout = 0.1
    broker = _KeepingBroker(MemoryBroker(config, memory_url.removeprefix("memory://")))
    app = Machinery(config, broker=broker)  # type: ignore[arg-type]

    @app.task
    def fails() -> None:
        raise ValueError("no")

    @app.task
    def works() -> int:
        return 1

    worker, thread = launch(app)
    try:
        bad, good = app.send_task(Signature("fails")), app.send_task(Signature("works"))
        with pytest.raises(TaskError):
            bad.get(timeout=10)
        assert good.get(timeout=10) == 1
        deadline = time.monotonic() + 5
        while len(broker.settled) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert broker.settled == {bad.uuid: "ack_failure", good.uuid: "ack"}
    finally:
        worker.quit()
        thread.join(10)
        app.close()


def test_a_chord_recovery_waits_for_a_live_trigger_before_sending_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member redelivered while the live trigger is between storing the callback's PENDING and
    marking it sent must not send it too (make chaos with MongoDB results saw a recovery 75 ms after the
    trigger's publish). The recovery waits up to RECOVERY_GRACE: the trigger's mark ends it; a PENDING
    that stays young and unmarked that long (its trigger died) is sent, once."""
    from machinery.worker import runner as runner_module
    from machinery.worker.runner import CHORD_SENT_KEY, TaskRunner

    monkeypatch.setattr(runner_module, "RECOVERY_GRACE", 1.0)
    monkeypatch.setattr(runner_module, "RECOVERY_POLL", 0.05)
    url = f"sqlite:///{tmp_path / 'chord.db'}"
    app = Machinery(Config(broker=url, result_backend=url))
    sent: list[str] = []
    app.set_pre_publish_handler(lambda sig: sent.append(sig.uuid))
    runner = TaskRunner(app)
    member = TaskState("m1", State.SUCCESS, task_name="add", results=[])

    def member_of(group: str, callback: str) -> Signature:
        app.backend.set_state(TaskState(callback, State.PENDING, task_name="add", created_at=now_utc()))
        return Signature(
            "add",
            uuid="m1",
            group_uuid=group,
            group_task_count=1,
            chord_callback=Signature("add", uuid=callback),
        )

    live = member_of("g-live", "cb-live")
    marker = threading.Timer(0.3, lambda: app.lock.acquire(CHORD_SENT_KEY.format("g-live"), 60))
    marker.start()  # the live trigger publishes, then marks
    started = time.monotonic()
    runner._recover_callback(live, [member])
    marker.join()
    assert sent == [], "the recovery sent a callback its live trigger was sending"
    assert time.monotonic() - started >= 0.9, "the recovery did not wait for the PENDING to age"

    dead = member_of("g-dead", "cb-dead")  # its trigger died after storing PENDING
    runner._recover_callback(dead, [member])
    runner._recover_callback(dead, [member])
    assert sent == ["cb-dead"], "an unsent callback is sent by exactly one recovery, after the grace"
    app.close()


def test_members_recovering_a_chord_at_once_send_its_callback_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that died holding three members of a chord it had triggered: all three come back at
    once (make chaos with MongoDB results: three recoveries in one process, 14 ms apart, each sent the
    callback). They take turns, each looking again on its turn: one sends it."""
    from machinery.worker import runner as runner_module
    from machinery.worker.runner import TaskRunner

    monkeypatch.setattr(runner_module, "RECOVERY_GRACE", 0.3)
    monkeypatch.setattr(runner_module, "RECOVERY_POLL", 0.02)
    url = f"sqlite:///{tmp_path / 'chord.db'}"
    app = Machinery(Config(broker=url, result_backend=url))
    sent: list[str] = []
    app.set_pre_publish_handler(lambda sig: sent.append(sig.uuid))
    runner = TaskRunner(app)
    callback = Signature("add", uuid="cb-orphan")  # its trigger died before storing PENDING
    members = [
        Signature("add", uuid=f"m{n}", group_uuid="g-orphan", group_task_count=3, chord_callback=callback)
        for n in range(3)
    ]
    states = [TaskState(m.uuid, State.SUCCESS, task_name="add", results=[]) for m in members]
    threads = [threading.Thread(target=runner._recover_callback, args=(m, states)) for m in members]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sent == ["cb-orphan"], f"concurrent recoveries sent the callback {len(sent)} times"
    app.close()


def test_a_chord_member_that_uses_up_its_budget_fails_the_unsent_callback(
    flaky: tuple[Machinery, FlakyBroker, FlakyBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member dead-lettered after its delivery budget never finishes again: the chord's callback
    ends FAILURE naming it, so get() raises instead of waiting forever (make chaos saw a member whose
    workers kept dying end in the dead letters and its callback never come)."""
    from machinery.workflow import Chord, Group

    app, _, _ = flaky
    _chord_tasks(app)
    worker, thread = launch(app)
    real_run = worker.runner.run

    def run(sig: Signature, redelivered: bool = False) -> Any:
        if sig.args and sig.args[0].value == 666:
            raise OverflowError("bookkeeping broke (on cue)")
        return real_run(sig, redelivered)

    monkeypatch.setattr(worker.runner, "run", run)
    try:
        chord = Chord(
            Group([Signature("add", args=[666, 1]), Signature("add", args=[2, 2])]), Signature("multiply")
        )
        app.send_chord(chord)
        callback = state_of(app, chord.callback.uuid, timeout=20)  # the other member finished first
        assert callback.state == State.FAILURE
        assert re.match(r"chord member add \(.*\) failed: gave up after 3 deliveries", callback.error)
    finally:
        worker.quit()
        thread.join(15)
