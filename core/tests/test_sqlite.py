"""The built-in sqlite:// broker, backend and lock: semantics, crash recovery and multi-process safety."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from machinery.capabilities import Capability
from machinery.config import Config
from machinery.errors import BrokerError, ConfigError, UnknownGroupError
from machinery.events import TaskEvent
from machinery.signature import Signature, State, TaskState, now_utc
from machinery.transports.sqlite import store
from machinery.transports.sqlite.backend import SQLiteBackend
from machinery.transports.sqlite.broker import SQLiteBroker, SQLiteDelivery
from machinery.transports.sqlite.lock import SQLiteLock
from machinery.transports.sqlite.store import parse_sqlite_url

CTX = multiprocessing.get_context("fork")
Q = "tasks"


def sig(uuid: str, queue: str = Q, **fields: Any) -> Signature:
    return Signature("add", [1, 2], uuid=uuid, routing_key=queue, **fields)


def uuids(deliveries: list[Any]) -> list[str]:
    return [d.signature.uuid for d in deliveries]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/machinery.db"  # tmp_path is absolute: four slashes in all


@pytest.fixture
def config() -> Config:
    return Config()


@pytest.fixture
def broker(url: str, config: Config) -> Iterator[SQLiteBroker]:
    b = SQLiteBroker.from_url(url, config)
    yield b
    b.close()


@pytest.fixture
def backend(url: str, config: Config) -> Iterator[SQLiteBackend]:
    b = SQLiteBackend.from_url(url, config)
    yield b
    b.close()


def join_all(procs: list[Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, f"{len(alive)} child processes did not finish"
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]


# ------------------------------------------------------------------------------------------------
# URLs and construction


def test_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_sqlite_url("sqlite:///sub/x.db").path == str(tmp_path / "sub" / "x.db")
    assert parse_sqlite_url("sqlite:////abs/x.db").path == "/abs/x.db"
    target = parse_sqlite_url("sqlite:///x.db?lease=5&renew=1.5")
    assert (target.lease, target.renew) == (5.0, 1.5)
    assert target.lease_seconds(Config()) == 5.0
    assert parse_sqlite_url("sqlite:///x.db").lease_seconds(Config()) == 30.0
    for bad in (
        "sqlite://relative.db",
        "sqlite://",
        "sqlite:///",
        "sqlite:///:memory:",
        "sqlite:///x.db?lease=abc",
        "sqlite:///x.db?lease=-1",
        "sqlite:///x.db?lease=1&renew=2",
        "sqlite:///x.db?bogus=1",
        "redis://x",
    ):
        with pytest.raises(ConfigError, match="sqlite"):
            SQLiteBroker.from_url(bad, Config())
    with pytest.raises(ConfigError, match="three slashes"):
        SQLiteBackend.from_url("sqlite://relative.db", Config())


def test_from_url_does_no_io_and_missing_directory_is_clear(tmp_path: Path) -> None:
    path = tmp_path / "lazy.db"
    broker = SQLiteBroker.from_url(f"sqlite:///{path}", Config())
    SQLiteBackend.from_url(f"sqlite:///{path}", Config())
    SQLiteLock.from_url(f"sqlite:///{path}", Config())
    assert not path.exists()
    assert broker.pending(Q) == []
    assert path.exists()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    broker.close()
    broker.close()  # idempotent

    missing = tmp_path / "no" / "such" / "dir" / "x.db"
    lost = SQLiteBroker.from_url(f"sqlite:///{missing}", Config())
    with pytest.raises(ConfigError, match="does not exist") as info:
        lost.publish(sig("a"))
    assert str(missing.parent) in str(info.value)


def _first_use(url: str, barrier: Any, i: int) -> None:
    barrier.wait(10)
    if i % 3 == 0:
        SQLiteBroker.from_url(url, Config()).publish(sig(f"m{i}"))
    elif i % 3 == 1:
        SQLiteBackend.from_url(url, Config()).set_state(TaskState(f"s{i}", State.PENDING))
    else:
        SQLiteLock.from_url(url, Config()).acquire(f"k{i}", 10)


def test_many_processes_create_a_new_file_at_once(url: str) -> None:
    barrier = CTX.Barrier(8)
    procs = [CTX.Process(target=_first_use, args=(url, barrier, i)) for i in range(8)]
    for p in procs:
        p.start()
    join_all(procs)
    broker = SQLiteBroker.from_url(url, Config())
    assert broker.count(Q) == 3
    broker.close()


def test_capabilities() -> None:
    assert {Capability.DELAY, Capability.DEAD_LETTER, Capability.REDELIVERY, Capability.MULTI_PROCESS} <= (
        SQLiteBroker.capabilities
    )
    assert SQLiteBackend.capabilities == {Capability.EXPIRY, Capability.MULTI_PROCESS}
    assert SQLiteLock.capabilities == {Capability.MULTI_PROCESS}


# ------------------------------------------------------------------------------------------------
# Broker semantics


def test_publish_consume_ack_leaves_nothing(broker: SQLiteBroker) -> None:
    broker.publish(sig("a"))
    [d] = broker.consume(Q, 10, 1.0)
    assert d.signature is not None and d.signature.uuid == "a" and d.signature.arg_values == [1, 2]
    assert not d.redelivered and d.error == ""
    assert broker.pending(Q) == []  # leased, not waiting
    d.ack()
    d.ack()  # settling twice is harmless
    assert broker.count() == 0
    assert broker.consume(Q, 10, 0.05) == []


def test_default_queue_when_no_routing_key(broker: SQLiteBroker, config: Config) -> None:
    broker.publish(Signature("add", [1], uuid="x"))
    assert uuids(broker.consume(config.default_queue, 1, 1.0)) == ["x"]


def test_nack_requeue_redelivers(broker: SQLiteBroker) -> None:
    broker.publish(sig("a"))
    [d] = broker.consume(Q, 1, 1.0)
    d.nack()
    [again] = broker.consume(Q, 1, 1.0)
    assert again.signature is not None and again.signature.uuid == "a"
    assert again.redelivered
    assert isinstance(again, SQLiteDelivery) and again.delivery_count == 2
    again.ack()
    assert broker.count() == 0


def test_nack_with_delay_is_not_early(broker: SQLiteBroker) -> None:
    broker.publish(sig("a"))
    [d] = broker.consume(Q, 1, 1.0)
    start = time.monotonic()
    d.nack(requeue=True, delay=0.3)
    assert [s.uuid for s in broker.delayed()] == ["a"]
    [again] = broker.consume(Q, 1, 3.0)
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 1.0
    again.ack()


def test_eta_is_honoured_not_early_and_promptly(broker: SQLiteBroker) -> None:
    eta = now_utc() + timedelta(seconds=0.4)
    broker.publish(sig("later", eta=eta))
    broker.publish(sig("now"))
    assert uuids(broker.consume(Q, 10, 1.0)) == ["now"]
    [d] = broker.consume(Q, 10, 3.0)
    late = (now_utc() - eta).total_seconds()
    assert d.signature is not None and d.signature.uuid == "later"
    assert 0 <= late < 0.2


def test_fifo_within_a_priority(broker: SQLiteBroker) -> None:
    names = [f"t{i:03d}" for i in range(60)]
    for n in names[:20]:
        broker.publish(sig(n))
    broker.publish_many([sig(n) for n in names[20:]])
    got: list[str] = []
    while len(got) < len(names):
        batch = broker.consume(Q, 7, 1.0)
        assert 0 < len(batch) <= 7
        got += uuids(batch)
        for d in batch:
            d.ack()
    assert got == names


def test_priority_first(broker: SQLiteBroker) -> None:
    broker.publish_many([sig("low1"), sig("high1", priority=9), sig("mid", priority=5), sig("low2")])
    broker.publish(sig("high2", priority=9))
    assert [s.uuid for s in broker.pending(Q)] == ["high1", "high2", "mid", "low1", "low2"]
    assert uuids(broker.consume(Q, 10, 1.0)) == ["high1", "high2", "mid", "low1", "low2"]


def test_max_messages_is_respected(broker: SQLiteBroker) -> None:
    broker.publish_many([sig(f"m{i}") for i in range(10)])
    assert len(broker.consume(Q, 3, 1.0)) == 3
    assert len(broker.consume(Q, 1, 1.0)) == 1
    assert broker.consume(Q, 0, 0.0) == []
    assert len(broker.consume(Q, 100, 1.0)) == 6


def test_queues_are_separate(broker: SQLiteBroker) -> None:
    broker.publish(sig("a", queue="one"))
    broker.publish(sig("b", queue="two"))
    assert uuids(broker.consume("two", 10, 1.0)) == ["b"]
    assert uuids(broker.consume("one", 10, 1.0)) == ["a"]


def test_pending_and_delayed_lists_in_order(broker: SQLiteBroker) -> None:
    base = now_utc()
    broker.publish(sig("d3", eta=base + timedelta(seconds=300)))
    broker.publish(sig("p1"))
    broker.publish(sig("d1", eta=base + timedelta(seconds=100), queue="other"))
    broker.publish(sig("p2"))
    broker.publish(sig("d2", eta=base + timedelta(seconds=200)))
    broker.publish(sig("past", eta=base - timedelta(seconds=5)))
    assert [s.uuid for s in broker.pending(Q)] == ["p1", "p2", "past"]
    assert [s.uuid for s in broker.delayed()] == ["d1", "d2", "d3"]
    [leased] = broker.consume(Q, 1, 1.0)
    assert [s.uuid for s in broker.pending(Q)] == ["p2", "past"]
    leased.ack()


def test_purge(broker: SQLiteBroker) -> None:
    broker.publish_many([sig("a"), sig("b"), sig("later", eta=now_utc() + timedelta(seconds=60))])
    broker.publish(sig("keep", queue="other"))
    broker.purge(Q)
    assert broker.pending(Q) == [] and broker.delayed() == []
    assert [s.uuid for s in broker.pending("other")] == ["keep"]


def test_dead_letter_on_nack_without_requeue(broker: SQLiteBroker) -> None:
    broker.publish(sig("bad"))
    broker.publish(sig("good"))
    [d, good] = broker.consume(Q, 2, 1.0)
    d.nack(requeue=False)
    good.ack()
    assert broker.count(Q) == 0
    [dead] = broker.dead_letters(Q)
    assert dead.signature is not None and dead.signature.uuid == "bad"
    assert dead.delivery_count == 1 and dead.queue == Q
    assert broker.consume(Q, 1, 0.05) == []
    broker.purge_dead_letters(Q)
    assert broker.dead_letters(Q) == []


def test_malformed_body_yields_an_error_delivery_and_does_not_block(broker: SQLiteBroker) -> None:
    broker.publish_raw(Q, b"\xff not json {")
    broker.publish_raw(Q, b'{"Name": 42}')
    broker.publish(sig("good"))
    first = broker.consume(Q, 1, 1.0)
    [bad] = first
    assert bad.signature is None and bad.error and bad.body == b"\xff not json {"
    bad.nack(requeue=False)
    [bad2, good] = broker.consume(Q, 5, 1.0)
    assert bad2.signature is None and "Name" in bad2.error
    assert good.signature is not None and good.signature.uuid == "good"
    assert broker.pending(Q) == []  # malformed bodies are skipped by the listing
    assert [x.body for x in broker.dead_letters(Q)] == [b"\xff not json {"]


def test_extend_pushes_the_lease(url: str) -> None:
    a = SQLiteBroker.from_url(url + "?lease=0.5&renew=0.4", Config())
    b = SQLiteBroker.from_url(url, Config())
    try:
        a.publish(sig("a"))
        [d] = a.consume(Q, 1, 1.0)
        d.extend(120)
        row = a._store.conn().execute("SELECT visible_at FROM messages").fetchone()
        assert row[0] > time.time() + 100
        assert b.consume(Q, 1, 0.05) == []
        d.ack()
    finally:
        a.close()
        b.close()


def expire_leases(path: str) -> None:
    """Make every lease run out now, as if its consumer had stopped renewing."""
    with sqlite3.connect(path) as db:
        db.execute("UPDATE messages SET visible_at = 0 WHERE lease_owner IS NOT NULL AND ready = 0")


def test_stale_ack_after_redelivery_does_nothing(url: str) -> None:
    a = SQLiteBroker.from_url(url, Config())
    b = SQLiteBroker.from_url(url, Config())
    try:
        a.publish(sig("a"))
        [stale] = a.consume(Q, 1, 1.0)
        expire_leases(a.path)
        [fresh] = b.consume(Q, 1, 1.0)
        assert fresh.redelivered
        stale.ack()  # the lease was lost and the message handed to b: a cannot delete it any more
        assert b.count(Q) == 1
        fresh.ack()
        assert b.count(Q) == 0
    finally:
        a.close()
        b.close()


def test_late_ack_before_redelivery_still_deletes(url: str) -> None:
    a = SQLiteBroker.from_url(url, Config())
    try:
        a.publish(sig("a"))
        [late] = a.consume(Q, 1, 1.0)
        expire_leases(a.path)
        assert [s.uuid for s in a.pending(Q)] == ["a"]  # visible again ...
        late.ack()  # ... but nobody took it yet: the task did finish, so the ack counts
        assert a.count(Q) == 0
    finally:
        a.close()


def test_close_returns_unsettled_leases_at_once(url: str) -> None:
    a = SQLiteBroker.from_url(url, Config())
    b = SQLiteBroker.from_url(url, Config())
    try:
        a.publish(sig("a"))
        [stale] = a.consume(Q, 1, 1.0)
        a.close()
        [d] = b.consume(Q, 1, 1.0)
        assert d.redelivered
        stale.ack()  # a lease that was given back cannot delete the message any more
        assert b.count(Q) == 1
        d.ack()
        assert b.count(Q) == 0
    finally:
        a.close()
        b.close()


def test_consume_wakes_on_publish_from_another_thread(broker: SQLiteBroker) -> None:
    timer = threading.Timer(0.2, lambda: broker.publish(sig("x")))
    start = time.monotonic()
    timer.start()
    try:
        [d] = broker.consume(Q, 1, 5.0)
    finally:
        timer.join()
    assert 0.15 < time.monotonic() - start < 0.5
    assert d.signature is not None and d.signature.uuid == "x"


def test_waiting_consumer_is_nearly_idle(broker: SQLiteBroker) -> None:
    broker.purge(Q)
    cpu, wall = time.process_time(), time.monotonic()
    assert broker.consume(Q, 1, 1.0) == []
    assert time.monotonic() - wall >= 1.0
    assert time.process_time() - cpu < 0.1


def test_threads_share_a_broker_without_duplicates(broker: SQLiteBroker) -> None:
    broker.publish_many([sig(f"t{i}") for i in range(400)])
    seen: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        while batch := broker.consume(Q, 8, 0.1):
            with lock:
                seen.extend(uuids(batch))
            broker.ack_many(batch)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(seen) == sorted(f"t{i}" for i in range(400))
    assert broker.count() == 0


# ------------------------------------------------------------------------------------------------
# Leases across processes


def _lease_and_hang(url: str, pipe: Connection) -> None:
    broker = SQLiteBroker.from_url(url, Config())
    deliveries = broker.consume(Q, 1, 10.0)
    pipe.send(uuids(deliveries))
    threading.Event().wait(60)  # "working" until killed


def test_sigkilled_consumer_lease_expires_and_message_is_redelivered(url: str) -> None:
    leased_url = url + "?lease=1&renew=0.3"
    other = SQLiteBroker.from_url(leased_url, Config())
    try:
        other.publish(sig("job"))
        reader, writer = CTX.Pipe(duplex=False)
        child = CTX.Process(target=_lease_and_hang, args=(leased_url, writer))
        child.start()
        assert reader.poll(10), "child did not lease the message"
        assert reader.recv() == ["job"]
        assert other.consume(Q, 1, 0.0) == []  # leased by the child
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(5)
        killed = time.monotonic()
        [d] = other.consume(Q, 1, 5.0)
        recovery = time.monotonic() - killed
        assert d.signature is not None and d.signature.uuid == "job"
        assert d.redelivered and isinstance(d, SQLiteDelivery) and d.delivery_count == 2
        assert recovery < 1.6  # at most one lease (1 s) after the last renewal, plus the wake-up
        d.ack()
        assert other.count() == 0
    finally:
        other.close()


def test_long_task_lease_is_renewed(url: str) -> None:
    short = url + "?lease=1&renew=0.2"
    worker = SQLiteBroker.from_url(short, Config())
    thief = SQLiteBroker.from_url(short, Config())
    try:
        worker.publish(sig("long"))
        [d] = worker.consume(Q, 1, 1.0)
        assert thief.consume(Q, 1, 3.0) == []  # 3 leases long: renewal keeps it
        d.ack()
        assert thief.count() == 0
    finally:
        worker.close()
        thief.close()


def _produce(url: str, n: int, count: int) -> None:
    broker = SQLiteBroker.from_url(url, Config())
    sigs = [sig(f"p{n}-{i}") for i in range(count)]
    half = count // 2
    for s in sigs[:half]:
        broker.publish(s)
    for start in range(half, count, 25):
        broker.publish_many(sigs[start : start + 25])
    broker.close()


def _consume(url: str, done: Any, out: Any) -> None:
    broker = SQLiteBroker.from_url(url, Config())
    seen: list[str] = []
    turn = 0
    while True:
        batch = broker.consume(Q, 16, 0.1)
        if not batch:
            if done.is_set():
                break
            continue
        seen.extend(uuids(batch))
        turn += 1
        if turn % 2:
            broker.ack_many(batch)
        else:
            for d in batch:
                d.ack()
    broker.close()
    out.put(seen)


def test_many_producer_and_consumer_processes_lose_and_duplicate_nothing(url: str) -> None:
    parent = SQLiteBroker.from_url(url, Config())
    parent.purge(Q)  # the parent has an open connection when it forks: children must not use it
    per_producer = 400
    done = CTX.Event()
    out = CTX.Queue()
    consumers = [CTX.Process(target=_consume, args=(url, done, out)) for _ in range(4)]
    producers = [CTX.Process(target=_produce, args=(url, n, per_producer)) for n in range(4)]
    for p in consumers + producers:
        p.start()
    join_all(producers)
    done.set()
    seen: Counter[str] = Counter()
    for _ in consumers:
        seen.update(out.get(timeout=30))
    join_all(consumers)
    expected = {f"p{n}-{i}" for n in range(4) for i in range(per_producer)}
    assert set(seen) == expected
    assert [k for k, v in seen.items() if v > 1] == []
    assert parent.count() == 0
    parent.close()


def test_forked_child_uses_a_broker_created_in_the_parent(broker: SQLiteBroker) -> None:
    broker.publish(sig("from-parent"))

    def child() -> None:
        [d] = broker.consume(Q, 1, 5.0)
        d.ack()
        broker.publish(sig("from-child"))

    p = CTX.Process(target=child)
    p.start()
    join_all([p])
    assert [s.uuid for s in broker.pending(Q)] == ["from-child"]


# ------------------------------------------------------------------------------------------------
# Backend


def test_state_merge_keeps_name_and_created_at(backend: SQLiteBackend) -> None:
    assert backend.get_state("nope") is None
    backend.set_state(TaskState("t1", State.PENDING, task_name="add"))
    first = backend.get_state("t1")
    assert first is not None and first.created_at is not None and first.task_name == "add"
    backend.set_state(TaskState("t1", State.STARTED))
    backend.set_states(
        [TaskState("t1", State.SUCCESS, results=[]), TaskState("t2", State.FAILURE, error="x")]
    )
    done = backend.get_state("t1")
    assert done is not None and done.state is State.SUCCESS
    assert done.task_name == "add" and done.created_at == first.created_at
    failed = backend.get_state("t2")
    assert failed is not None and failed.error == "x" and failed.created_at is not None
    backend.purge_state("t1")
    assert backend.get_state("t1") is None


def test_results_expire(url: str) -> None:
    config = Config()
    config.results_expire_in = 1
    backend = SQLiteBackend.from_url(url, config)
    try:
        backend.set_state(TaskState("t", State.SUCCESS, results=[]))
        assert backend.get_state("t") is not None
        deadline = time.monotonic() + 3
        while backend.get_state("t") is not None and time.monotonic() < deadline:
            time.sleep(0.05)  # waiting for the clock itself, nothing to signal
        assert backend.get_state("t") is None
        assert backend.wait(["t"], 0.0) == {}
        backend.sweep()
        rows = sqlite3.connect(backend.path).execute("SELECT COUNT(*) FROM states").fetchone()[0]
        assert rows == 0
    finally:
        backend.close()


def test_groups_in_order_and_unknown_group(backend: SQLiteBackend) -> None:
    backend.init_group("g", ["c", "a", "b"])
    backend.set_states([TaskState("a", State.SUCCESS, results=[]), TaskState("b", State.STARTED)])
    states = backend.group_states("g")
    assert [(s.task_uuid, s.state) for s in states] == [
        ("c", State.PENDING),
        ("a", State.SUCCESS),
        ("b", State.STARTED),
    ]
    with pytest.raises(UnknownGroupError, match="never initialised"):
        backend.group_states("missing")
    with pytest.raises(UnknownGroupError):
        backend.trigger_chord("missing")
    assert backend.trigger_chord("g") is True
    assert backend.trigger_chord("g") is False
    backend.purge_group("g")
    with pytest.raises(UnknownGroupError):
        backend.group_states("g")


def test_group_stays_alive_while_members_write(url: str) -> None:
    config = Config()
    config.results_expire_in = 1
    backend = SQLiteBackend.from_url(url, config)
    try:
        backend.init_group("g", ["a", "b"])
        backend.init_group("idle", ["x"])
        end = time.monotonic() + 1.6
        while time.monotonic() < end:
            backend.set_state(TaskState("a", State.RETRY))
            time.sleep(0.2)  # a slow, retrying member
        assert len(backend.group_states("g")) == 2
        with pytest.raises(UnknownGroupError):
            backend.group_states("idle")
    finally:
        backend.close()


def _race_chords(url: str, groups: list[str], barrier: Any, out: Any) -> None:
    backend = SQLiteBackend.from_url(url, Config())
    wins: list[str] = []
    lock = threading.Lock()

    def run(seed: int) -> None:
        order = list(groups)
        random.Random(seed).shuffle(order)
        mine = [g for g in order if backend.trigger_chord(g)]
        with lock:
            wins.extend(mine)

    threads = [threading.Thread(target=run, args=(os.getpid() * 10 + i,)) for i in range(8)]
    barrier.wait(10)
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    out.put(wins)


def test_trigger_chord_exactly_once_across_processes_and_threads(backend: SQLiteBackend, url: str) -> None:
    groups = [f"group_{i}" for i in range(200)]
    for g in groups:
        backend.init_group(g, [f"{g}-a", f"{g}-b"])
    barrier = CTX.Barrier(2)
    out = CTX.Queue()
    procs = [CTX.Process(target=_race_chords, args=(url, groups, barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    wins: Counter[str] = Counter()
    for _ in procs:
        wins.update(out.get(timeout=60))
    join_all(procs)
    assert set(wins) == set(groups)
    assert max(wins.values()) == 1


def _set_state_when_told(url: str, go: Any, pipe: Connection) -> None:
    backend = SQLiteBackend.from_url(url, Config())
    backend.get_state("warm-up")  # connection open before the clock starts
    pipe.send("ready")
    go.wait(10)
    backend.set_state(TaskState("remote", State.SUCCESS, results=[]))
    pipe.send(time.time())


def test_wait_wakes_quickly_after_a_state_from_another_process(backend: SQLiteBackend, url: str) -> None:
    backend.set_state(TaskState("local-done", State.FAILURE, error="e"))
    go = CTX.Event()
    reader, writer = CTX.Pipe(duplex=False)
    child = CTX.Process(target=_set_state_when_told, args=(url, go, writer))
    child.start()
    try:
        assert reader.poll(10) and reader.recv() == "ready"
        threading.Timer(0.1, go.set).start()
        done = backend.wait(["remote", "local-done", "remote"], 10.0)
        returned = time.time()
        assert reader.poll(5)
        latency = returned - reader.recv()
    finally:
        join_all([child])
    assert set(done) == {"remote", "local-done"}
    assert done["remote"].state is State.SUCCESS
    assert latency < 0.1


def test_wait_wakes_at_once_in_process_and_times_out(backend: SQLiteBackend) -> None:
    start = time.monotonic()
    assert backend.wait(["never"], 0.2) == {}
    assert 0.2 <= time.monotonic() - start < 0.5
    timer = threading.Timer(0.1, lambda: backend.set_state(TaskState("soon", State.SUCCESS, results=[])))
    timer.start()
    start = time.monotonic()
    done = backend.wait(["soon"], 5.0)
    timer.join()
    assert list(done) == ["soon"] and time.monotonic() - start < 0.3


# ------------------------------------------------------------------------------------------------
# Lock


def _take_lock(url: str, barrier: Any, out: Any) -> None:
    lock = SQLiteLock.from_url(url, Config())
    lock.holder("warm-up")
    barrier.wait(10)
    out.put(lock.acquire("periodic", 30.0))


def test_lock_one_holder_among_racing_processes(url: str) -> None:
    n = 6
    barrier = CTX.Barrier(n)
    out = CTX.Queue()
    procs = [CTX.Process(target=_take_lock, args=(url, barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=20) for _ in procs]
    join_all(procs)
    assert results.count(True) == 1


def test_lock_expiry_and_owner_only_release(url: str) -> None:
    first = SQLiteLock.from_url(url, Config())
    second = SQLiteLock.from_url(url, Config())
    try:
        assert first.acquire("k", 0.3)
        assert not second.acquire("k", 0.3)
        assert not first.acquire("k", 0.3)  # not re-entrant
        second.release("k")  # not the owner: nothing happens
        assert first.holder("k") == first.owner
        deadline = time.monotonic() + 3
        taken = False
        while not taken and time.monotonic() < deadline:
            taken = second.acquire("k", 10)
            if not taken:
                time.sleep(0.02)  # waiting for the clock: the holder's ttl
        assert taken and second.holder("k") == second.owner
        first.release("k")
        assert second.holder("k") == second.owner
        second.release("k")
        assert first.acquire("k", 1)
    finally:
        first.close()
        second.close()
        second.close()


def test_forked_lock_is_another_owner(url: str) -> None:
    lock = SQLiteLock.from_url(url, Config())
    assert lock.acquire("k", 30)

    def child() -> None:
        lock.release("k")  # the copy in the child is not the owner
        assert not lock.acquire("k", 30)

    p = CTX.Process(target=child)
    p.start()
    join_all([p])
    assert lock.holder("k") == lock.owner
    lock.close()


def test_a_version_2_database_is_upgraded_and_keeps_its_dead_letters(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    died_at = float(int(time.time()) - 60)  # recent: dead letters expire
    v2 = store.SCHEMA.replace(",\n    reason TEXT NOT NULL DEFAULT ''", "")
    assert v2 != store.SCHEMA
    with sqlite3.connect(path) as db:
        for statement in store._statements(v2):
            db.execute(statement)
        db.execute(
            "INSERT INTO dead_letters (queue, body, priority, delivery_count, created, died_at) "
            "VALUES (?, ?, 0, 2, 1.0, ?)",
            (Q, b"old", died_at),
        )
        db.execute("PRAGMA user_version = 2")
    broker = SQLiteBroker.from_url(f"sqlite:///{path}", Config())
    broker.publish(sig("new"))
    [d] = broker.consume(Q, 1, 1.0)
    d.nack(requeue=False, reason="poison")
    old, new = broker.dead_letters(Q)
    assert (old.body, old.reason, old.delivery_count, old.time.timestamp()) == (b"old", "", 2, died_at)
    assert (new.reason, new.delivery_count) == ("poison", 1)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
    broker.close()


def test_dead_letters_of_every_queue_with_a_limit(broker: SQLiteBroker) -> None:
    broker.publish_many([sig("a"), sig("b"), Signature("t", [], uuid="c", routing_key="other")])
    for queue in (Q, "other"):
        for d in broker.consume(queue, 5, 1.0):
            d.nack(requeue=False)
    assert [x.queue for x in broker.dead_letters()] == [Q, Q, "other"]
    assert len(broker.dead_letters(limit=2)) == 2 and broker.dead_letters(Q, limit=0) == []


def test_schema_version_is_checked(tmp_path: Path) -> None:
    for version, match in ((99, "newer"), (1, "pre-release")):
        path = tmp_path / f"v{version}.db"
        with sqlite3.connect(path) as db:
            db.execute(f"PRAGMA user_version = {version}")
        with pytest.raises(BrokerError, match=match):
            SQLiteBroker.from_url(f"sqlite:///{path}", Config()).pending(Q)


def test_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "not-a-db.db"
    path.write_bytes(b"this is not a database file" * 100)
    broker = SQLiteBroker.from_url(f"sqlite:///{path}", Config())
    with pytest.raises(BrokerError, match="not-a-db.db"):
        broker.publish(sig("a"))


def test_a_writing_process_checkpoints_in_the_background(
    broker: SQLiteBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every CHECKPOINT_EVERY commits a thread copies the WAL back into the file, so no writer's commit
    has to (the pages land in the database file: a new connection reads them without the WAL)."""
    monkeypatch.setattr(store, "CHECKPOINT_EVERY", 3)
    hub = broker._store.hub
    hub.checkpointed.clear()
    for _ in range(3):
        broker.publish(Signature(name="t"))
    assert hub.checkpointed.wait(10), "no background checkpoint after CHECKPOINT_EVERY commits"
    # a new file's pages were only in the WAL (the commits' own checkpoint comes at 10,000 pages)
    assert os.path.getsize(broker.path) > 0, "the checkpoint copied nothing into the database file"


def test_events_live_in_their_own_file(url: str, backend: SQLiteBackend) -> None:
    """The events thread's writes take turns on the events file's lock, not the database's."""
    backend.get_state("u0")  # opens the database file too
    backend.record_events([TaskEvent("received", "u1", "add", "q", "w", time.time())])
    assert backend.task_events("u1")[0].task_uuid == "u1"
    path = parse_sqlite_url(url).path
    events = sqlite3.connect(path + "-events")
    try:
        assert events.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1
    finally:
        events.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
    finally:
        db.close()


def test_a_tasks_events_are_found_through_the_index(backend: SQLiteBackend) -> None:
    """task_events must not scan every event (up to events.max_events rows)."""
    from machinery.transports.sqlite.events import _TASK_EVENTS_SQL

    plan = backend._events.execute("plan", "EXPLAIN QUERY PLAN " + _TASK_EVENTS_SQL, ("u", 0.0)).fetchall()
    assert any("USING INDEX events_task" in row[-1] for row in plan), plan
