"""``WorkerContract``: real workers (in a thread and in separate processes) running Machinery's
integration scenarios with their expected values, and ``FaultContract``: killed workers, restarted
servers, bad credentials."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pytest

from ..app import Machinery
from ..broker import SupportsDeadLetters
from ..capabilities import Capability
from ..config import Config
from ..errors import (
    BackendError,
    BrokerError,
    ConfigError,
    MachineryError,
    PluginNotFoundError,
    ResultTimeoutError,
    TaskError,
)
from ..redact import redact_url
from ..result import AsyncResult
from ..signature import Signature, State, new_uuid, now_utc
from ..workflow import Chain, Chord, Group
from ._base import ContractBase, requires
from ._util import Child, RunLog, eventually, unique
from .tasks import make_app

__all__ = ["FaultContract", "WorkerContract"]

fault = pytest.mark.machinery_fault


def s(name: str, *args: Any, **fields: Any) -> Signature:
    return Signature(name, args=list(args), **fields)


@dataclass
class RunningWorker:
    """A started worker: in a thread (``app`` set) or in a child process (``child`` set).

    ``signal`` asks it to stop, ``wait`` waits until it stopped (so several stop in parallel).
    """

    mode: str
    tag: str
    signal: Callable[[], object]
    wait: Callable[[], object]
    child: Child | None = None
    app: Machinery | None = None

    def stop(self) -> None:
        self.signal()
        self.wait()

    def kill(self) -> None:
        assert self.child is not None, "only a worker process can be killed"
        self.child.kill()


class _WorkerBase(ContractBase):
    """Starting workers and producers on a queue of this test's own."""

    worker_concurrency: ClassVar[int] = 4
    #: seconds a ``get()`` of the scenarios may wait
    result_timeout: ClassVar[float] = 20.0

    task_queue: str
    runlog: RunLog

    @pytest.fixture(autouse=True)
    def _worker_setup(self, _contract_setup: None) -> None:
        self.task_queue = unique("q")
        self.runlog = RunLog(self.workdir / "runs")
        self._workers: list[RunningWorker] = []

    def _stop_workers(self) -> None:
        """Stop every worker of the test at once (each takes up to a consume timeout to notice)."""
        workers, self._workers = self._workers, []
        for worker in workers:
            with contextlib.suppress(Exception):
                worker.signal()
        for worker in workers:
            with contextlib.suppress(Exception):
                worker.wait()

    def _started(self, worker: RunningWorker) -> RunningWorker:
        if not self._workers:
            self.closing(self._stop_workers)  # runs before the objects the workers were built from close
        self._workers.append(worker)
        return worker

    @property
    def timeout(self) -> float:
        return self.t(self.result_timeout)

    def app_config(self, **worker_changes: Any) -> Config:
        config = self.config_copy(default_queue=self.task_queue)
        for name, value in worker_changes.items():
            setattr(config.worker, name, value)
        return config

    def producer(self, config: Config | None = None) -> Machinery:
        """An app for sending (no worker), with its own broker and backend objects."""
        config = config or self.app_config()
        app = make_app(config=config, broker=self.new_broker(config), backend=self.new_backend(config))
        self.closing(app.close)
        return app

    def require_processes(self) -> None:
        self.require("broker", Capability.MULTI_PROCESS)
        self.require("backend", Capability.MULTI_PROCESS)
        self.need_url("broker")
        self.need_url("backend")

    def start_worker(
        self,
        mode: str,
        *,
        only: Iterable[str] | None = None,
        concurrency: int | None = None,
        config: Config | None = None,
        tag: str | None = None,
    ) -> RunningWorker:
        config = config or self.app_config()
        concurrency = concurrency or self.worker_concurrency
        tag = tag or unique("worker")
        if mode == "thread":
            app = make_app(
                config=config,
                runlog=str(self.runlog.dir),
                only=only,
                broker=self.make_broker(self.urls["broker"], config),
                backend=self.make_backend(self.urls["backend"], config),
            )
            worker = app.worker(tag, concurrency=concurrency, queue=self.task_queue)
            thread = worker.launch_async()
            eventually(lambda: worker.running, self.t(10), "the worker thread to start")

            def wait() -> None:
                thread.join(self.t(20))
                app.close()

            return self._started(RunningWorker(mode, tag, worker.quit, wait, app=app))
        assert mode == "process", mode
        self.require_processes()
        config = copy_with_urls(config, self.need_url("broker"), self.need_url("backend"))
        child = Child(
            "machinery.testing.workerproc",
            {
                "config": config,
                "runlog": str(self.runlog.dir),
                "only": None if only is None else list(only),
                "concurrency": concurrency,
                "queue": self.task_queue,
                "tag": tag,
                "plugin_modules": list(self.plugin_modules),
            },
            self.workdir,
            tag,
        )
        running = self._started(RunningWorker(mode, tag, child.terminate, child.close, child=child))
        child.expect("ready", self.t(30))
        return running

    def get(self, result: AsyncResult, timeout: float | None = None) -> Any:
        return result.get(timeout=timeout or self.timeout)


def copy_with_urls(config: Config, broker_url: str, backend_url: str) -> Config:
    import copy

    config = copy.copy(config)
    config.broker = broker_url
    config.result_backend = backend_url
    return config


class WorkerContract(_WorkerBase):
    """End to end through real workers. Subclass with ``broker_url`` and ``backend_url`` fixtures.

    Every scenario runs with a worker in a thread and with a worker in a separate process (the
    latter needs ``multi_process`` on the broker and the backend, and URLs the child can rebuild).
    """

    @pytest.fixture(params=["thread", "process"])
    def worker_mode(self, request: pytest.FixtureRequest) -> str:
        mode: str = request.param
        if mode == "process":
            self.require_processes()
        return mode

    # Machinery's testAll ------------------------------------------------------------------------
    def test_worker_send_task(self, worker_mode: str) -> None:
        app = self.producer()
        self.start_worker(worker_mode)
        assert self.get(app.send_task(s("add", 1, 1))) == 2
        assert self.get(app.send_task(s("sum", [1, 2]))) == 3

    @pytest.mark.parametrize("send_concurrency", [0, 2])
    def test_worker_send_group(self, worker_mode: str, send_concurrency: int) -> None:
        app = self.producer()
        self.start_worker(worker_mode)
        group = Group([s("add", 1, 1), s("add", 2, 2), s("add", 5, 6)])
        result = app.send_group(group, concurrency=send_concurrency)
        assert sorted(self.get(r) for r in result) == [2, 4, 11]
        assert result.get(timeout=self.timeout) == [2, 4, 11]

    def test_worker_send_chord(self, worker_mode: str) -> None:
        app = self.producer()
        self.start_worker(worker_mode)
        chord = Chord(Group([s("add", 1, 1), s("add", 2, 2), s("add", 5, 6)]), s("multiply"))
        assert self.get(app.send_chord(chord, concurrency=10)) == 88

    def test_worker_send_chain(self, worker_mode: str) -> None:
        app = self.producer()
        self.start_worker(worker_mode)
        assert self.get(app.send_chain(Chain([s("add", 2, 2), s("add", 5, 6), s("multiply", 4)]))) == 60
        chain = Chain([s("add", 1, 1), s("add", 2, 2), s("add", 5, 6), s("multiply", 4)])
        assert self.get(app.send_chain(chain)) == 68

    def test_worker_return_just_error(self, worker_mode: str) -> None:
        app = self.producer()
        self.start_worker(worker_mode)
        with pytest.raises(TaskError) as info:
            self.get(app.send_task(s("return_just_error", "Test error", True)))
        assert str(info.value) == "Test error"
        assert self.get(app.send_task(s("return_just_error", "Test error", False))) is None

    def test_worker_return_multiple_values(self, worker_mode: str) -> None:
        app = self.producer()
        self.start_worker(worker_mode)
        assert self.get(app.send_task(s("return_multiple_values", "foo", "bar", False))) == ("foo", "bar")
        with pytest.raises(TaskError, match="some error"):
            self.get(app.send_task(s("return_multiple_values", "foo", "bar", True)))

    def test_worker_panic(self, worker_mode: str) -> None:
        app = self.producer()
        self.start_worker(worker_mode)
        result = app.send_task(s("panic"))
        with pytest.raises(TaskError) as info:
            self.get(result)
        assert str(info.value) == "oops"
        assert result.state == State.FAILURE

    def test_worker_eta(self, worker_mode: str) -> None:
        app = self.producer()
        self.start_worker(worker_mode)
        eta = now_utc() + timedelta(milliseconds=500)
        eta_ns = (eta - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000
        ran_ns = self.get(app.send_task(s("delay_test", eta=eta)))
        assert ran_ns >= eta_ns, f"the task ran {(eta_ns - ran_ns) / 1e6:.1f} ms before its ETA"
        self.record(f"worker ETA lateness ({worker_mode})", f"{(ran_ns - eta_ns) / 1e6:.1f} ms")

    def test_worker_retries_exact_run_counts(self, worker_mode: str) -> None:
        app = self.producer()
        self.start_worker(worker_mode)
        ok_key, fail_key = unique("flaky"), unique("flaky")
        ok = app.send_task(s("flaky", ok_key, 2, retry_count=3))
        failing = app.send_task(s("flaky", fail_key, 5, retry_count=1))
        assert self.get(ok) == 3
        assert self.runlog.count(ok_key, "run") == 3, (
            "a task failing twice with retry_count=3 must run 3 times"
        )
        with pytest.raises(TaskError) as info:
            self.get(failing)
        assert str(info.value) == "flaky failure 2"
        assert self.runlog.count(fail_key, "run") == 2, "retry_count=1 means two runs, then FAILURE"

    @requires(Capability.PENDING_LIST, of="broker")
    def test_worker_pending_tasks(self, worker_mode: str) -> None:
        app = self.producer()
        sent = [app.send_task(s("add", 1, 2)), app.send_task(s("add", 3, 5)), app.send_task(s("add", 6, 7))]
        pending = app.broker.pending(self.task_queue)
        assert [p.uuid for p in pending] == [r.uuid for r in sent]
        assert [p.name for p in pending] == ["add"] * 3
        assert [len(p.args) for p in pending] == [2, 2, 2]
        self.start_worker(worker_mode)
        assert [self.get(r) for r in sent] == [3, 8, 13]
        eventually(lambda: app.broker.pending(self.task_queue) == [], self.t(10), "pending() to be empty")

    def test_worker_registered_only(self, worker_mode: str) -> None:
        """Two workers on one queue, each knowing one task: unregistered tasks go to the other."""
        config = self.app_config(unregistered_requeue_limit=1000, unregistered_requeue_seconds=600.0)
        app = self.producer(config)
        self.start_worker(worker_mode, only=["add"], config=config)
        self.start_worker(worker_mode, only=["multiply"], config=config)
        result = app.send_group(Group([s("multiply", 4, 5), s("add", 2, 3)]), concurrency=10)
        # a task may bounce between the two workers a few times (requeue back-off doubles up to 5 s)
        assert sorted(self.get(r, self.t(60)) for r in result) == [5, 20]

    # Python additions ------------------------------------------------------------------------------
    @requires(Capability.REDELIVERY, of="broker")
    def test_worker_task_longer_than_the_lease_runs_once(self) -> None:
        """A task running past the broker's lease is not delivered again while its worker lives."""
        app = self.producer()
        self.start_worker("thread", concurrency=2)  # a free slot would take a redelivered copy
        key = unique("long")
        seconds = 2 * self.lease_seconds + 0.5
        assert self.get(app.send_task(s("sleep_record", key, seconds)), seconds + self.timeout) == key
        starts = self.runlog.count(key, "start")
        assert starts == 1, (
            f"a task running {seconds:.1f}s (lease_seconds={self.lease_seconds}) started {starts} times: the "
            "lease is not renewed while the task runs, so the broker delivered the message again. Renew "
            "the leases of live deliveries on a timer (machinery.lease.LeaseKeeper) until they are settled"
        )

    def test_worker_unregistered_task_fails(self) -> None:
        app = self.producer()
        self.start_worker("thread")
        with pytest.raises(TaskError) as info:
            self.get(app.send_task(s("contract_not_registered")))
        assert str(info.value) == "task 'contract_not_registered' is not registered"

    def test_worker_malformed_message(self, publish_raw: Any) -> None:
        put = self.need("publish_raw", publish_raw)
        app = self.producer()
        self.start_worker("thread")
        readable = new_uuid()
        body = {"UUID": readable, "Name": "add", "Args": [{"Type": "int64", "Value": "not a number"}]}
        put(self.task_queue, json.dumps(body).encode())
        put(self.task_queue, b"\xff\xfe garbage")
        try:
            state = AsyncResult(app, readable).wait_state(self.timeout)
        except ResultTimeoutError:
            pytest.fail(
                "the worker did not fail a malformed message: does consume raise on a body it cannot "
                "decode? (BrokerContract.test_broker_malformed_message says so)"
            )
        assert state.state == State.FAILURE
        assert state.error.startswith("malformed message"), state.error
        assert self.get(app.send_task(s("add", 1, 1))) == 2, "the worker stopped after a malformed message"
        broker = app.broker
        if Capability.DEAD_LETTER in broker.capabilities and isinstance(broker, SupportsDeadLetters):

            def dead() -> bool:
                letters: list[Any] = list(broker.dead_letters(self.task_queue))
                return b"\xff\xfe garbage" in [bytes(getattr(x, "body", x)) for x in letters]

            eventually(dead, self.t(10), "the unreadable message in dead_letters(queue)")

    def test_worker_quit_race(self) -> None:
        """Machinery's quit race: launch_async then quit at once, 3 times; no exception, quick."""
        errors: list[BaseException] = []
        previous = threading.excepthook

        def hook(args: threading.ExceptHookArgs) -> None:
            errors.append(args.exc_value or RuntimeError(str(args.exc_type)))

        threading.excepthook = hook
        try:
            for _ in range(3):
                app = make_app(config=self.app_config(), broker=self.new_broker(), backend=self.new_backend())
                worker = app.worker(unique("quit"), concurrency=2, queue=self.task_queue)
                start = time.monotonic()
                thread = worker.launch_async()
                worker.quit()
                thread.join(self.t(5))
                elapsed = time.monotonic() - start
                assert not thread.is_alive(), "quit() right after launch_async() did not stop the worker"
                assert elapsed < self.t(2.0), f"quit() right after launch_async() took {elapsed:.2f}s"
                app.close()
        finally:
            threading.excepthook = previous
        assert not errors, f"the worker raised: {errors!r}"

    def test_worker_pre_consume_handler(self) -> None:
        app = make_app(config=self.app_config(), broker=self.new_broker(), backend=self.new_backend())
        self.closing(app.close)
        called = threading.Event()
        worker = app.worker(unique("w"), concurrency=1, queue=self.task_queue)

        def handler(w: Any) -> bool:
            called.set()
            return True

        worker.set_pre_consume_handler(handler)
        thread = worker.launch_async()
        try:
            assert called.wait(self.t(5)), "the pre-consume handler was not called"
        finally:
            worker.quit()
            thread.join(self.t(10))

    def test_worker_get_unknown_uuid_times_out(self) -> None:
        app = self.producer()
        start = time.monotonic()
        with pytest.raises(ResultTimeoutError):
            AsyncResult(app, new_uuid()).get(timeout=0.5)
        elapsed = time.monotonic() - start
        assert 0.45 <= elapsed <= 0.5 + self.t(2), f"get(timeout=0.5) took {elapsed:.2f}s"


class FaultContract(_WorkerBase):
    """Fault tests, marked ``machinery_fault``. Run them on one combination per plugin.

    Fixtures: ``restart_server``, ``bad_credentials_url``, ``unreachable_url`` (return
    :func:`~machinery.testing.not_applicable` where a fault cannot happen). ``error_timeout``: how
    long a bad URL may take to fail.
    """

    error_timeout: ClassVar[float] = 20.0
    killed_tasks: ClassVar[int] = 4

    @fault
    @requires(Capability.REDELIVERY, of="broker")
    def test_fault_sigkill_worker_with_started_tasks(self) -> None:
        self.require_processes()
        n = self.killed_tasks
        app = self.producer()
        victim = self.start_worker("process", concurrency=n, tag="victim")
        keys = [unique("hold") for _ in range(n)]
        results = [app.send_task(s("hold", key, 300.0)) for key in keys]

        def all_started() -> bool:
            states = [app.backend.get_state(r.uuid) for r in results]
            return all(st is not None and st.state == State.STARTED for st in states)

        eventually(all_started, self.t(30), f"{n} tasks to be STARTED on the victim worker")
        assert all(self.runlog.count(k, "start") == 1 for k in keys)
        victim.kill()
        killed = time.monotonic()
        self.start_worker("process", concurrency=n, tag="survivor")
        timeout = self.t(2 * self.lease_seconds + self.result_timeout)
        values = [self.get(r, timeout) for r in results]
        assert all(v >= 2 for v in values), f"a task did not run again after the kill: {values}"
        done = {k: self.runlog.count(k, "done") for k in keys}
        starts = {k: self.runlog.count(k, "start") for k in keys}
        assert sum(done.values()) == n, f"completions {done}: expected each task to complete exactly once"
        duplicates = sum(starts.values()) - n
        self.record(
            "SIGKILL fault",
            f"{n} STARTED tasks completed on another worker {time.monotonic() - killed:.1f}s after the kill; "
            f"completions={sum(done.values())}, extra runs (redeliveries)={duplicates}",
        )

    @fault
    def test_fault_server_restart(self, restart_server: Any) -> None:
        restart = self.need("restart_server", restart_server)
        app = self.producer()
        self.start_worker("thread", concurrency=2)
        before = [unique("before") for _ in range(4)]
        assert [self.get(app.send_task(s("record", k))) for k in before] == before
        during = [unique("during") for _ in range(4)]
        for key in during:
            app.send_task(s("sleep_record", key, 0.3))
        started = time.monotonic()
        restart()
        restarted = time.monotonic() - started
        after = [unique("after") for _ in range(4)]
        sent_after = [app.send_task(s("record", k)) for k in after]

        def all_done() -> bool:
            return all(self.runlog.count(k, "done") >= 1 for k in before + during + after)

        eventually(all_done, self.t(60), "every task sent before, during and after the restart to complete")
        assert [self.get(r) for r in sent_after] == after
        self.record("server restart", f"restart took {restarted:.1f}s; 12 tasks completed")

    def _bad_url_fails_clearly(self, url: str, what: str) -> None:
        password = urlsplit(url).password if "://" in url else None
        checked: list[str] = []
        for kind, operation, expected in (
            ("broker", _broker_operation, BrokerError),
            ("backend", _backend_operation, BackendError),
            ("lock", _lock_operation, MachineryError),
        ):
            factories: dict[str, Callable[[str, Config], Any]] = {
                "broker": self.make_broker,
                "backend": self.make_backend,
                "lock": self.make_lock,
            }
            try:
                obj: Any = factories[kind](url, self.config)
            except PluginNotFoundError:
                continue
            self.closing(obj.close)
            error, elapsed = _run_bounded(partial(operation, obj), self.t(self.error_timeout))
            assert error is not None, (
                f"{kind} on {redact_url(url)} ({what}): no error within {self.error_timeout}s"
            )
            assert isinstance(error, expected | ConfigError), (
                f"{kind} on {what} raised {type(error).__name__}, expected a {expected.__name__} "
                f"(or a ConfigError when the URL itself is wrong): {error}"
            )
            chain = _chain_text(error)
            if password:
                assert password not in chain, f"{kind}: the password shows in the error: {chain}"
            assert _names_url(str(error), url), f"{kind}: the error does not name {redact_url(url)}: {error}"
            checked.append(f"{kind} {elapsed:.2f}s")
        assert checked, f"no installed plugin builds a broker, backend or lock for {redact_url(url)}"
        self.record(f"{what} error", ", ".join(checked))

    @fault
    def test_fault_bad_credentials(self, bad_credentials_url: Any) -> None:
        self._bad_url_fails_clearly(self.need("bad_credentials_url", bad_credentials_url), "bad credentials")

    @fault
    def test_fault_unreachable_server(self, unreachable_url: Any) -> None:
        self._bad_url_fails_clearly(self.need("unreachable_url", unreachable_url), "unreachable server")


def _broker_operation(broker: Any) -> None:
    broker.publish(Signature("contract_fault", uuid=new_uuid(), routing_key=unique("q")))
    broker.consume(unique("q"), 1, 1.0)


def _backend_operation(backend: Any) -> None:
    from ..signature import TaskState

    uuid = new_uuid()
    backend.set_state(TaskState(uuid, State.PENDING, "contract_fault"))
    backend.get_state(uuid)


def _lock_operation(lock: Any) -> None:
    key = unique("lock")
    lock.acquire(key, 1)
    lock.release(key)


def _run_bounded(fn: Callable[[], None], timeout: float) -> tuple[BaseException | None, float]:
    """Run ``fn`` in a thread; the exception it raised (None if it returned) and the time taken.
    A call still blocked after ``timeout`` counts as no error."""
    out: list[BaseException] = []
    start = time.monotonic()

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    elapsed = time.monotonic() - start
    if thread.is_alive():
        return None, elapsed
    return (out[0] if out else None), elapsed


def _chain_text(error: BaseException) -> str:
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(f"{current!s} {current!r}")
        current = current.__cause__ or current.__context__
    return " | ".join(parts)


def _names_url(message: str, url: str) -> bool:
    """The message names the URL: its redacted form, its host:port, or (host-less URLs) its path."""
    candidates = [redact_url(url)]
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        host = parts.hostname or ""
        if host:
            candidates.append(f"{host}:{parts.port}" if parts.port else host)
        elif parts.path:
            candidates.append(parts.path.lstrip("/") if parts.path.startswith("//") else parts.path)
    return any(c and c in message for c in candidates)
