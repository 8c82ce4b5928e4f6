"""The producer API on memory:// and eager mode (Core I)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from machinery import (
    AsyncResult,
    Chain,
    Chord,
    Config,
    Group,
    Machinery,
    PluginNotFoundError,
    ResultNotReady,
    ResultTimeoutError,
    Signature,
    State,
    TaskError,
)
from machinery.worker import Worker


def register_examples(app: Machinery) -> None:
    @app.task
    def add(*args: int) -> int:
        return sum(args)

    @app.task
    def multiply(*args: int) -> int:
        product = 1
        for value in args:
            product *= value
        return product

    @app.task(name="sum_ints")
    def sum_ints(numbers: list[int]) -> int:
        return sum(numbers)

    @app.task
    def return_just_error(msg: str, fail: bool) -> None:
        if fail:
            raise RuntimeError(msg)

    @app.task
    def return_multiple_values(a: str, b: str) -> tuple[str, str]:
        return a, b

    @app.task
    def panic() -> str:
        raise Exception("oops")


@pytest.fixture
def worker(app: Machinery) -> Iterator[Worker]:
    register_examples(app)
    running = app.worker("test", concurrency=4)
    thread = running.launch_async()
    yield running
    running.quit()
    thread.join(10)
    assert not thread.is_alive()


def test_send_task_returns_value(worker: Worker) -> None:
    app = worker.app
    assert app.send_task(Signature("add", args=[1, 1])).get(timeout=5) == 2
    assert app.send_task(app.tasks["sum_ints"].s([1, 2])).get(timeout=5) == 3


def test_send_task_states_and_pending_record(app: Machinery) -> None:
    register_examples(app)
    result = app.send_task(app.tasks["add"].s(1, 2))
    state = app.backend.get_state(result.uuid)
    assert state is not None and state.state == State.PENDING and state.task_name == "add"
    assert result.state == "PENDING" and not result.ready()
    assert result.uuid.startswith("task_")


@pytest.mark.parametrize("concurrency", [0, 2])
def test_group(worker: Worker, concurrency: int) -> None:
    add = worker.app.tasks["add"]
    results = worker.app.send_group(Group([add.s(1, 1), add.s(2, 2), add.s(5, 6)]), concurrency=concurrency)
    assert [r.get(timeout=5) for r in results] == [2, 4, 11]
    assert results.get(timeout=5) == [2, 4, 11]


def test_chord(worker: Worker) -> None:
    t = worker.app.tasks
    chord = Chord(Group([t["add"].s(1, 1), t["add"].s(2, 2), t["add"].s(5, 6)]), t["multiply"].s())
    assert worker.app.send_chord(chord, concurrency=10).get(timeout=5) == 88


def test_chord_with_failed_member_raises_naming_it(worker: Worker) -> None:
    t = worker.app.tasks
    failing = t["panic"].s()
    chord = Chord(Group([t["add"].s(1, 1), failing]), t["multiply"].s())
    result = worker.app.send_chord(chord)
    with pytest.raises(TaskError) as info:
        result.get(timeout=5)
    assert failing.uuid in str(info.value) and "oops" in str(info.value)
    callback = AsyncResult(worker.app, chord.callback.uuid)
    with pytest.raises(TaskError):
        callback.get(timeout=5)  # the callback is failed visibly, never run


def test_chains(worker: Worker) -> None:
    t = worker.app.tasks
    chain = Chain([t["add"].s(2, 2), t["add"].s(5, 6), t["multiply"].s(4)])
    assert worker.app.send_chain(chain).get(timeout=5) == 60
    chain = Chain([t["add"].s(1, 1), t["add"].s(2, 2), t["add"].s(5, 6), t["multiply"].s(4)])
    assert worker.app.send_chain(chain).get(timeout=5) == 68


def test_si_link_ignores_its_parents_results_as_in_celery(worker: Worker) -> None:
    t = worker.app.tasks
    chain = Chain([t["add"].s(2, 2), t["multiply"].si(4, 5)])
    assert worker.app.send_chain(chain).get(timeout=5) == 20
    assert chain.signatures[0].immutable, "sent as Go's flag on the previous link"


def test_go_immutable_flag_keeps_its_wire_meaning(worker: Worker) -> None:
    t = worker.app.tasks
    first = t["add"].s(2, 2)
    first.immutable = True  # Go: this task's results are not passed on
    chain = Chain([first, t["multiply"].s(4, 5)])
    assert worker.app.send_chain(chain).get(timeout=5) == 20


def test_chain_raises_at_first_failing_link(worker: Worker) -> None:
    t = worker.app.tasks
    chain = Chain([t["add"].s(1), t["panic"].si(), t["add"].s(1)])
    with pytest.raises(TaskError, match="^oops$"):
        worker.app.send_chain(chain).get(timeout=5)


def test_errors_keep_exact_text(worker: Worker) -> None:
    t = worker.app.tasks
    with pytest.raises(TaskError) as info:
        worker.app.send_task(t["return_just_error"].s("Test error", True)).get(timeout=5)
    assert str(info.value) == "Test error"
    assert worker.app.send_task(t["return_just_error"].s("Test error", False)).get(timeout=5) is None
    with pytest.raises(TaskError) as info:
        worker.app.send_task(t["panic"].s()).get(timeout=5)
    assert str(info.value) == "oops"


def test_multiple_values_come_back_as_tuple(worker: Worker) -> None:
    t = worker.app.tasks
    assert worker.app.send_task(t["return_multiple_values"].s("foo", "bar")).get(timeout=5) == ("foo", "bar")


def test_send_tasks_batch(worker: Worker) -> None:
    add = worker.app.tasks["add"]
    sigs = [add.s(i, i) for i in range(50)]
    sigs[3].uuid = "task_mine"
    results = worker.app.send_tasks(sigs)
    assert [r.get(timeout=10) for r in results] == [2 * i for i in range(50)]
    ids = [r.uuid for r in results]
    assert ids[3] == "task_mine" and len(set(ids)) == 50, "a given id is kept, the others are fresh"


def test_kwargs_and_nested_values(worker: Worker) -> None:
    @worker.app.task
    def describe(items: dict[str, list[int]], *, scale: int = 1) -> dict[str, int]:
        return {k: sum(v) * scale for k, v in items.items()}

    sig = describe.s({"a": [1, 2], "b": [2**70]}, scale=2)
    assert worker.app.send_task(sig).get(timeout=5) == {"a": 6, "b": 2**71}


def test_eta_is_never_early(worker: Worker) -> None:
    @worker.app.task
    def stamp() -> float:
        return datetime.now(UTC).timestamp()

    eta = datetime.now(UTC) + timedelta(milliseconds=300)
    ran_at = worker.app.send_task(stamp.s().set(eta=eta)).get(timeout=5)
    assert ran_at >= eta.timestamp()


def test_pre_publish_handler_sees_every_signature(app: Machinery) -> None:
    register_examples(app)
    seen: list[str] = []
    app.set_pre_publish_handler(lambda sig: seen.append(sig.name))
    app.send_task(app.tasks["add"].s(1))
    app.send_group(Group([app.tasks["add"].s(1), app.tasks["multiply"].s(2)]))
    assert seen == ["add", "add", "multiply"]


def test_unknown_uuid_times_out_without_spinning(app: Machinery) -> None:
    result = AsyncResult(app, "task_does-not-exist")
    timer = threading.Timer(5.0, lambda: None)
    with pytest.raises(ResultTimeoutError) as info:
        result.get(timeout=0.3)
    timer.cancel()
    assert isinstance(info.value, TimeoutError)
    assert result.state == "PENDING"


def test_unknown_scheme_fails_at_construction_without_the_password() -> None:
    with pytest.raises(PluginNotFoundError) as info:
        Machinery(Config(broker="memory://", result_backend="nosuch://guest:secret@host/"))
    assert "nosuch://host" in str(info.value) and "secret" not in str(info.value)
    with pytest.raises(PluginNotFoundError, match="No broker for 'nosuch://host'"):
        Machinery(Config(broker="nosuch://user:secret@host", result_backend="memory://"))


def test_ready_made_objects_are_used(memory_url: str) -> None:
    from machinery.transports.memory.backend import MemoryBackend
    from machinery.transports.memory.broker import MemoryBroker
    from machinery.transports.memory.lock import MemoryLock

    broker, backend, lock = MemoryBroker(name="x"), MemoryBackend(name="x"), MemoryLock(name="x")
    app = Machinery(
        Config(broker="nope://", result_backend="nope://"), broker=broker, backend=backend, lock=lock
    )
    assert app.broker is broker and app.backend is backend and app.lock is lock


def test_eager_mode_runs_in_the_caller() -> None:
    app = Machinery(Config(eager=True))
    called: list[float] = []

    @app.task
    def float_called(x: float) -> None:
        called.append(x)

    @app.task
    def float_result(x: float) -> float:
        return x * 2

    @app.task
    def int_result(x: int) -> int:
        return x * 2

    app.send_task(float_called.s(100.0))
    assert called == [100.0]
    result = app.send_task(float_result.s(100.0))
    assert result.ready() and result.state == State.SUCCESS
    assert result.get(timeout=0) == 200.0
    assert app.send_task(int_result.s(100)).get(timeout=0) == 200


def test_task_decorator_keeps_function_callable(app: Machinery) -> None:
    @app.task(name="double")
    def double(x: int) -> int:
        return 2 * x

    assert double(4) == 8
    assert app.is_registered("double") and double.name == "double"
    app.register_tasks({"triple": lambda x: 3 * x})
    assert app.tasks["triple"](2) == 6


@pytest.mark.parametrize(
    ("links", "wire_flags", "value"),
    [
        # Celery reading                 Go wire flags (Immutable per link)  result
        (("s(2,2)", "s(4,5)"), [False, False], 80),  # multiply(4, 5, 4)
        (("s(2,2)", "si(4,5)"), [True, False], 20),  # multiply ignores add's 4
        (("si(2,2)", "s(4,5)"), [False, False], 80),  # .si() on the first link: no parent to ignore
    ],
)
def test_celery_si_and_go_wire_flags_side_by_side(
    worker: Worker, links: tuple[str, str], wire_flags: list[bool], value: int
) -> None:
    t = worker.app.tasks
    first = t["add"].si(2, 2) if links[0] == "si(2,2)" else t["add"].s(2, 2)
    second = t["multiply"].si(4, 5) if links[1] == "si(4,5)" else t["multiply"].s(4, 5)
    chain = Chain([first, second])
    assert [s.immutable for s in chain.signatures] == wire_flags
    assert worker.app.send_chain(chain).get(timeout=5) == value


def test_chord_callback_si_gets_no_member_results(worker: Worker) -> None:
    t = worker.app.tasks
    chord = Chord(Group([t["add"].s(1, 1), t["add"].s(2, 2)]), t["multiply"].si(3, 4))
    assert chord.callback.immutable, "Go reads the flag on the callback itself"
    assert worker.app.send_chord(chord).get(timeout=5) == 12


def test_touch_never_blocks_and_tells_not_ready_from_none(app: Machinery) -> None:
    @app.task
    def nothing() -> None:
        return None

    @app.task
    def boom() -> None:
        raise ValueError("kaput")

    pending = app.send_task(nothing.s())
    with pytest.raises(ResultNotReady, match="not finished"):
        pending.touch()
    with pytest.raises(ResultNotReady, match="unknown"):
        AsyncResult(app, "task_never_sent").touch()
    worker = app.worker(concurrency=1)
    thread = worker.launch_async()
    try:
        failed = app.send_task(boom.s())
        pending.get(timeout=5)
        assert pending.touch() is None
        with pytest.raises(TaskError, match="kaput"):
            failed.get(timeout=5)
        with pytest.raises(TaskError, match="kaput"):
            failed.touch()
    finally:
        worker.quit()
        thread.join(5)
    assert thread.error is None and not thread.is_alive()


def test_apply_async_takes_celery_options(app: Machinery) -> None:
    @app.task
    def add(*args: int) -> int:
        return sum(args)

    before = datetime.now(UTC)
    result = add.apply_async((1, 2), countdown=30, queue="later", priority=3)
    (sig,) = app.broker.delayed()
    assert (sig.uuid, sig.routing_key, sig.priority, sig.arg_values) == (result.uuid, "later", 3, [1, 2])
    assert sig.eta is not None and 29 <= (sig.eta - before).total_seconds() <= 31
    with pytest.raises(ValueError, match="countdown or eta"):
        add.apply_async((1,), countdown=1, eta=before)


def test_launch_async_reports_what_stopped_the_worker(app: Machinery) -> None:
    class StartupError(Exception):
        pass

    def fail() -> None:
        raise StartupError("the start-up failed")

    worker = app.worker(concurrency=1)
    worker._log_start = fail  # type: ignore[method-assign]
    thread = worker.launch_async()
    thread.join(10)
    assert isinstance(thread, threading.Thread) and not thread.is_alive()
    assert isinstance(thread.error, StartupError)
    with pytest.raises(StartupError):
        thread.raise_error()


@pytest.mark.parametrize("bulk", [False, True])
def test_new_uuid_is_a_random_uuid4_with_its_prefix(bulk: bool) -> None:
    import uuid

    from machinery.signature import new_uuid, new_uuids

    ids = set(new_uuids(2000, "group")) if bulk else {new_uuid("group") for _ in range(2000)}
    assert len(ids) == 2000
    for value in ids:
        prefix, _, text = value.partition("_")
        parsed = uuid.UUID(text)
        assert prefix == "group"
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)
