"""The AMQP result backend against a real RabbitMQ."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pika
import pytest
from amqp_testlib import Admin, Names

from machinery import Arg, Config, State, TaskState
from machinery.errors import UnknownGroupError
from machinery_amqp import AMQPBackend

pytestmark = pytest.mark.services


def uid(names: Names, n: object) -> str:
    return f"task_{names.suffix}_{n}"


def test_states_keep_name_and_creation_time(backend: AMQPBackend, names: Names) -> None:
    u = uid(names, 1)
    assert backend.get_state(u) is None
    created = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    backend.set_state(TaskState(u, State.PENDING, task_name="add", created_at=created))
    backend.set_state(TaskState(u, State.RECEIVED, task_name="add"))
    backend.set_state(TaskState(u, State.STARTED))
    state = backend.get_state(u)
    assert state is not None
    assert (state.state, state.task_name, state.created_at) == (State.STARTED, "add", created)
    backend.set_state(TaskState(u, State.SUCCESS, results=[Arg(2, "int64")]))
    state = backend.get_state(u)
    assert state is not None and state.is_success and state.values == [2] and state.task_name == "add"
    backend.purge_state(u)
    assert backend.get_state(u) is None
    backend.purge_state(u)  # twice is fine
    backend.set_state(TaskState(u, State.FAILURE, error="boom"))  # written again after a purge
    again = backend.get_state(u)
    assert again is not None and again.error == "boom"


def test_reading_does_not_consume(backend: AMQPBackend, names: Names, amqp_url: str, config: Config) -> None:
    """Go's AMQP backend popped the state on read: two pollers stole each other's results."""
    u = uid(names, "shared")
    backend.set_state(TaskState(u, State.SUCCESS, task_name="add", results=[Arg(3, "int64")]))
    readers = [AMQPBackend(amqp_url, config) for _ in range(6)]
    misses: list[object] = []

    def read(b: AMQPBackend) -> None:
        for _ in range(30):
            state = b.get_state(u)
            if state is None or not state.is_success:
                misses.append(state)

    threads = [threading.Thread(target=read, args=(b,)) for b in readers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for b in readers:
        b.close()
    assert misses == []
    assert backend.get_state(u) is not None


def test_latest_state_wins_under_concurrent_reads(
    backend: AMQPBackend, names: Names, amqp_url: str, config: Config
) -> None:
    u = uid(names, "race")
    stop = threading.Event()
    readers = [AMQPBackend(amqp_url, config) for _ in range(3)]

    def read(b: AMQPBackend) -> None:
        while not stop.is_set():
            b.get_state(u)

    threads = [threading.Thread(target=read, args=(b,)) for b in readers]
    for t in threads:
        t.start()
    try:
        for state in (State.PENDING, State.RECEIVED, State.STARTED, State.SUCCESS):
            backend.set_state(TaskState(u, state, task_name="add"))
    finally:
        stop.set()
        for t in threads:
            t.join()
        for b in readers:
            b.close()
    time.sleep(0.05)
    final = backend.get_state(u)
    assert final is not None and final.state is State.SUCCESS


def test_wait_is_pushed(backend: AMQPBackend, names: Names, amqp_url: str, config: Config) -> None:
    a, b = uid(names, "a"), uid(names, "b")
    backend.set_state(TaskState(a, State.SUCCESS, task_name="x", results=[]))
    backend.set_state(TaskState(b, State.STARTED, task_name="x"))
    writer = AMQPBackend(amqp_url, config)
    written = []

    def finish() -> None:
        time.sleep(0.5)
        writer.set_state(TaskState(b, State.FAILURE, error="no"))
        written.append(time.monotonic())

    t = threading.Thread(target=finish)
    t.start()
    try:
        found = backend.wait([a, b, a], timeout=10)
        woke = time.monotonic()
    finally:
        t.join()
        writer.close()
    assert set(found) == {a, b}
    assert found[b].is_failure and found[b].error == "no"
    assert woke - written[0] < 0.25  # woken by the write, not by a slow poll
    # a timeout returns what is complete
    c = uid(names, "c")
    backend.set_state(TaskState(c, State.STARTED))
    start = time.monotonic()
    assert backend.wait([c, a], timeout=0.4).keys() == {a}
    assert 0.35 < time.monotonic() - start < 2.0
    assert backend.wait([c], timeout=0) == {}


def test_groups(backend: AMQPBackend, names: Names) -> None:
    g = f"group_{names.suffix}"
    members = [uid(names, n) for n in range(3)]
    with pytest.raises(UnknownGroupError):
        backend.group_states(g)
    with pytest.raises(UnknownGroupError):
        backend.trigger_chord(g)
    backend.init_group(g, members)
    states = backend.group_states(g)
    assert [s.task_uuid for s in states] == members
    assert all(s.state is State.PENDING for s in states)
    backend.set_state(TaskState(members[1], State.SUCCESS, task_name="add", results=[Arg(4, "int64")]))
    backend.set_state(TaskState(members[0], State.FAILURE, task_name="add", error="x"))
    states = backend.group_states(g)
    assert [s.state for s in states] == [State.FAILURE, State.SUCCESS, State.PENDING]
    assert backend.trigger_chord(g) is True
    assert backend.trigger_chord(g) is False
    backend.purge_group(g)
    with pytest.raises(UnknownGroupError):
        backend.group_states(g)


RACE_SCRIPT = """
import sys, threading
from machinery import Config
from machinery_amqp import AMQPBackend
url, exchange, group = sys.argv[1:4]
config = Config()
config.amqp.exchange = exchange
backends = [AMQPBackend(url, config) for _ in range(4)]
barrier = threading.Barrier(4)
wins = []
def go(b):
    barrier.wait()
    if b.trigger_chord(group):
        wins.append(1)
threads = [threading.Thread(target=go, args=(b,)) for b in backends]
for t in threads: t.start()
for t in threads: t.join()
print(len(wins))
"""


def test_trigger_chord_exactly_once_across_processes(
    backend: AMQPBackend, names: Names, amqp_url: str
) -> None:
    for round_ in range(3):
        g = f"group_{names.suffix}_{round_}"
        backend.init_group(g, [uid(names, 1)])
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", RACE_SCRIPT, amqp_url, names.exchange, g],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        local: list[bool] = []

        def trigger(group: str = g, out: list[bool] = local) -> None:
            out.append(backend.trigger_chord(group))

        local_threads = [threading.Thread(target=trigger) for _ in range(3)]
        for t in local_threads:
            t.start()
        for t in local_threads:
            t.join()
        remote = sum(int((p.communicate(timeout=60)[0] or "0").strip()) for p in procs)
        assert remote + sum(local) == 1
        backend.purge_group(g)


def test_results_expire(make_config, amqp_url: str, names: Names, admin: Admin) -> None:  # type: ignore[no-untyped-def]
    config = make_config()
    config.results_expire_in = 1
    backend = AMQPBackend(amqp_url, config)
    try:
        u, polled = uid(names, "exp"), uid(names, "polled")
        backend.set_state(TaskState(u, State.SUCCESS, task_name="x", results=[]))
        backend.set_state(TaskState(polled, State.SUCCESS, task_name="x", results=[]))
        assert admin.exists(u)
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:  # reads renew the queue, not the result in it
            backend.get_state(polled)
        assert not admin.exists(u)
        assert backend.get_state(u) is None
        assert backend.get_state(polled) is None
    finally:
        backend.close()


def test_state_queue_is_durable_with_expiry(backend: AMQPBackend, names: Names, admin: Admin) -> None:
    u = uid(names, "dur")
    backend.set_state(TaskState(u, State.PENDING, task_name="x"))
    # redeclaring with the documented arguments succeeds only if they are exactly these
    admin.channel.queue_declare(
        u,
        durable=True,
        arguments={
            "x-expires": 120_000,
            "x-message-ttl": 120_000,
            "x-max-length": 1,
            "x-overflow": "drop-head",
        },
    )
    assert admin.count(u) == 1
    backend.purge_state(u)


def test_expiry_change_replaces_the_queue(make_config, amqp_url: str, names: Names) -> None:  # type: ignore[no-untyped-def]
    """results_expire_in is reloadable: a queue declared with the old x-expires is replaced."""
    config = make_config()
    backend = AMQPBackend(amqp_url, config)
    try:
        u = uid(names, "reload")
        backend.set_state(TaskState(u, State.PENDING, task_name="x"))
        config.results_expire_in = 300
        backend.set_state(TaskState(u, State.STARTED))
        state = backend.get_state(u)
        assert state is not None and state.state is State.STARTED and state.task_name == "x"
        backend.purge_state(u)
    finally:
        backend.close()


def test_no_password_in_repr(amqp_url: str, config: Config) -> None:
    backend = AMQPBackend("amqp://user:s3cret@localhost:5672/vh", config)
    assert "s3cret" not in repr(backend)


# --- Go interop: Go's golden declaration (backends/amqp/amqp.go) ---------------------------------------


def _go_declare(admin: Admin, name: str, expires_s: int) -> None:
    """A result queue exactly as Go Machinery declares it: non-durable, auto-delete, message TTL and
    queue expiry both ResultsExpireIn in ms (an int32)."""
    ms = expires_s * 1000
    admin._ch().queue_declare(
        name, durable=False, auto_delete=True, arguments={"x-message-ttl": ms, "x-expires": ms}
    )


def test_a_state_written_by_go_is_read_once_then_the_queue_is_ours(
    backend: AMQPBackend, admin: Admin, names: Names, config: Config
) -> None:
    """One way only: a Go-written state is read (the queue is then redeclared our way, keeping it)."""
    u = uid(names, "from-go")
    admin.queues.add(u)
    _go_declare(admin, u, backend.expires_in)
    golden = (Path(__file__).parents[3] / "core" / "tests" / "golden" / "state_success.json").read_bytes()
    admin._ch().basic_publish("", u, golden.replace(b"task_0b9f4c3e-5f8a-4b0e-9d1c-2a7e6f3b8c91", u.encode()))
    state = backend.get_state(u) or backend.get_state(u)  # the first read may replace the queue
    assert state is not None and state.is_success and state.values == [2] and state.task_name == "add"
    again = backend.get_state(u)
    assert again is not None and again.values == [2], "reading must not consume (Go's did)"


def test_go_cannot_redeclare_a_result_queue_of_ours(backend: AMQPBackend, admin: Admin, names: Names) -> None:
    """Why Go and Python workers cannot share amqp:// results (README, "Go interop"): RabbitMQ refuses
    Go's declaration of a queue this backend made, and Go's worker fails on it."""
    u = uid(names, "to-go")
    admin.queues.add(u)
    backend.set_state(TaskState(u, State.SUCCESS, task_name="add", results=[Arg(2, "int64")]))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        _go_declare(admin, u, backend.expires_in)
    assert info.value.reply_code == 406  # PRECONDITION_FAILED: inequivalent arg 'durable'
