"""The Redis result backend and lock against the real server: Go's layout, push wait, chords."""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from machinery import Config
from machinery.config import NEVER_EXPIRE
from machinery.errors import UnknownGroupError
from machinery.signature import Arg, State, TaskState, now_utc
from machinery_redis import RedisBackend, RedisLock
from machinery_redis.backend import GO_CHORD_MUTEX, done_key

pytestmark = pytest.mark.services

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture
def backend(redis_url: str, raw: redis.Redis, name: str) -> Iterator[RedisBackend]:
    config = Config(results_expire_in=600)
    backend = RedisBackend.from_url(redis_url, config)
    yield backend
    backend.close()
    keys = list(raw.scan_iter(match=f"*{name}*"))
    if keys:
        raw.delete(*keys)


def test_state_layout_and_merge_like_go(backend: RedisBackend, raw: redis.Redis, name: str) -> None:
    uuid = f"task_{name}"
    pending = (GOLDEN / "go_state_pending.json").read_text().strip().replace("@UUID@", uuid)
    raw.set(uuid, pending)  # written by a Go producer
    backend.set_state(TaskState(uuid, State.STARTED))  # no name, no time: both kept from PENDING
    stored = json.loads(raw.get(uuid))
    assert stored["State"] == "STARTED" and stored["TaskName"] == "add"
    assert stored["CreatedAt"] == "2025-11-15T12:07:02.1234567Z"
    assert 590 <= raw.ttl(uuid) <= 600  # EX results_expire_in, reset on each write
    backend.set_state(TaskState(uuid, State.SUCCESS, task_name="add", results=[Arg(2, "int64")]))
    golden = json.loads((GOLDEN / "go_state_success.json").read_text().replace("@UUID@", uuid))
    stored = json.loads(raw.get(uuid))
    assert list(stored) == list(golden) and stored == golden
    state = backend.get_state(uuid)
    assert state is not None and state.values == [2] and state.created_at is not None


def test_results_that_never_expire_have_no_ttl(redis_url: str, raw: redis.Redis, name: str) -> None:
    """results_expire_in = -1: states (plain SET and script) and groups get no TTL, and a group read or
    triggered loses the one an earlier write gave it."""
    uuid, group, fresh = f"task_{name}", f"group_{name}", f"group_{name}_fresh"
    expiring = RedisBackend.from_url(redis_url, Config(results_expire_in=600))
    expiring.init_group(group, [uuid])
    expiring.close()
    never = RedisBackend.from_url(redis_url, Config(results_expire_in=NEVER_EXPIRE))
    try:
        never.set_state(TaskState(uuid, State.PENDING, "add", created_at=now_utc()))  # plain SET
        assert raw.ttl(uuid) == -1
        never.set_state(TaskState(uuid, State.SUCCESS, results=[Arg(1, "int64")]))  # the script
        assert raw.ttl(uuid) == -1
        assert [s.state for s in never.group_states(group)] == [State.SUCCESS]  # GETEX PERSIST
        assert raw.ttl(group) == -1
        never.init_group(fresh, [uuid])
        assert raw.ttl(fresh) == -1
        assert [s.state for s in never.group_states(fresh)] == [State.SUCCESS]  # cached: PERSIST, EXISTS
        assert never.trigger_chord(fresh) and not never.trigger_chord(fresh)
        assert raw.ttl(fresh) == -1
        never.purge_group(fresh)
        with pytest.raises(UnknownGroupError):
            never.group_states(fresh)
    finally:
        never.close()
        raw.delete(uuid, group, fresh)


def test_a_first_state_gets_a_creation_time(backend: RedisBackend, raw: redis.Redis, name: str) -> None:
    uuid = f"task_{name}"
    backend.set_state(TaskState(uuid, State.RECEIVED, task_name="add"))
    stored = json.loads(raw.get(uuid))
    assert stored["CreatedAt"] != "0001-01-01T00:00:00Z" and stored["CreatedAt"].endswith("Z")
    assert backend.get_state(f"task_{name}_unknown") is None


def test_set_states_is_one_round_trip(
    backend: RedisBackend, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    run = backend.conn.run

    def counting(commands: Any, **kw: Any) -> Any:
        calls.append(len(commands))
        return run(commands, **kw)

    monkeypatch.setattr(backend.conn, "run", counting)
    states = [TaskState(f"task_{name}_{i}", State.SUCCESS, task_name="add") for i in range(20)]
    backend.set_states(states)
    assert calls == [1]  # one script call for the batch: one reply to read
    assert [s.state for s in backend.get_states([s.task_uuid for s in states])] == [State.SUCCESS] * 20


def test_a_batch_merges_each_state_with_the_one_before(
    backend: RedisBackend, raw: redis.Redis, name: str
) -> None:
    """Within one batch, a state without a task name or creation time keeps those of the state written
    before it (the batch script applies the single-state rules in order, remembering what it wrote)."""
    uuid, fresh = f"task_{name}", f"task_{name}_fresh"
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    backend.set_state(TaskState(uuid, State.PENDING, task_name="add", created_at=created))
    backend.set_states(
        [
            TaskState(uuid, State.RECEIVED, task_name="add"),
            TaskState(fresh, State.STARTED),  # nothing stored before: a creation time, no name
            TaskState(uuid, State.STARTED),
            TaskState(fresh, State.PENDING, task_name="mul", created_at=created),
            TaskState(fresh, State.STARTED),
            TaskState(uuid, State.SUCCESS, results=[]),
        ]
    )
    stored = json.loads(raw.get(uuid))
    assert (stored["State"], stored["TaskName"], stored["CreatedAt"]) == (
        "SUCCESS",
        "add",
        "2026-01-02T03:04:05Z",
    )
    other = json.loads(raw.get(fresh))
    assert (other["State"], other["TaskName"], other["CreatedAt"]) == (
        "STARTED",
        "mul",
        "2026-01-02T03:04:05Z",
    )
    assert 0 < raw.ttl(uuid) <= backend.expires_in


def test_wait_wakes_on_push_and_writes_nothing_when_nobody_waits(
    backend: RedisBackend, redis_url: str, raw: redis.Redis, name: str
) -> None:
    writer = RedisBackend.from_url(redis_url, Config())
    uuid = f"task_{name}_quiet"
    writer.set_state(TaskState(uuid, State.SUCCESS, task_name="add"))
    assert not raw.exists(done_key(uuid))  # no waiter: no notification list
    latencies = []
    for i in range(10):
        uuid = f"task_{name}_{i}"
        writer.set_state(TaskState(uuid, State.PENDING, task_name="add", created_at=now_utc()))
        stamp: list[float] = []

        def finish(u: str = uuid, n: int = i, stamp: list[float] = stamp) -> None:
            stamp.append(time.monotonic())
            writer.set_state(TaskState(u, State.SUCCESS, task_name="add", results=[Arg(n, "int64")]))

        timer = threading.Timer(0.05, finish)
        timer.start()
        got = backend.wait([uuid], 5.0)
        latencies.append(time.monotonic() - stamp[0])
        timer.join()
        assert got[uuid].values == [i]
    writer.close()
    assert statistics.median(latencies) < 0.05, f"push wait too slow: {latencies}"


def test_wait_picks_up_a_state_written_without_notification(
    backend: RedisBackend, raw: redis.Redis, name: str
) -> None:
    uuid = f"task_{name}"
    success = (GOLDEN / "go_state_success.json").read_text().strip().replace("@UUID@", uuid)
    threading.Timer(0.2, lambda: raw.set(uuid, success)).start()  # a Go worker: plain SET, no push
    start = time.monotonic()
    got = backend.wait([uuid, uuid], 5.0)
    assert got[uuid].values == [2] and time.monotonic() - start < 2.5
    assert backend.wait([], 5.0) == {}
    start = time.monotonic()
    assert backend.wait([f"task_{name}_never"], 0.3) == {}
    assert 0.25 <= time.monotonic() - start < 1.5


def test_groups_in_go_layout(backend: RedisBackend, raw: redis.Redis, name: str) -> None:
    group, a, b = f"group_{name}", f"task_{name}_a", f"task_{name}_b"
    backend.init_group(group, [a, b])
    meta = json.loads(raw.get(group))
    assert list(meta) == ["GroupUUID", "TaskUUIDs", "ChordTriggered", "Lock", "CreatedAt", "TTL"]
    assert meta["TaskUUIDs"] == [a, b] and meta["ChordTriggered"] is False
    backend.set_state(TaskState(b, State.SUCCESS, task_name="add"))
    assert [s.state for s in backend.group_states(group)] == [State.PENDING, State.SUCCESS]
    raw.expire(group, 5)
    backend.group_states(group)
    assert raw.ttl(group) > 500  # refreshed while the group is read (#352)
    backend.purge_group(group)
    with pytest.raises(UnknownGroupError):
        backend.group_states(group)


def test_a_go_written_group_and_its_chord(backend: RedisBackend, raw: redis.Redis, name: str) -> None:
    group, a, b = f"group_{name}", f"task_{name}_a", f"task_{name}_b"
    text = (GOLDEN / "go_group_meta.json").read_text().strip()
    raw.set(group, text.replace("@GROUP@", group).replace("@A@", a).replace("@B@", b))
    assert [s.task_uuid for s in backend.group_states(group)] == [a, b]
    assert backend.trigger_chord(group) is True
    assert backend.trigger_chord(group) is False
    assert json.loads(raw.get(group))["ChordTriggered"] is True  # Go sees it too


def test_trigger_chord_exactly_once_under_a_thread_race(
    backend: RedisBackend, redis_url: str, name: str
) -> None:
    groups = [f"group_{name}_{i}" for i in range(50)]
    for group in groups:
        backend.init_group(group, [f"task_{group}"])
    backends = [RedisBackend.from_url(redis_url, Config()) for _ in range(8)]
    wins: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(backends))

    def race(b: RedisBackend) -> None:
        barrier.wait()
        for group in groups:
            if b.trigger_chord(group):
                with lock:
                    wins.append(group)

    threads = [threading.Thread(target=race, args=(b,)) for b in backends]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for b in backends:
        b.close()
    assert sorted(wins) == sorted(groups)


def test_trigger_chord_waits_for_go_chord_mutex(backend: RedisBackend, raw: redis.Redis, name: str) -> None:
    group = f"group_{name}"
    backend.init_group(group, [f"task_{name}"])
    raw.set(GO_CHORD_MUTEX, "go-worker-token", px=400)  # a Go worker inside TriggerChord
    start = time.monotonic()
    assert backend.trigger_chord(group) is True
    assert time.monotonic() - start >= 0.3
    with pytest.raises(UnknownGroupError):
        backend.trigger_chord(f"group_{name}_missing")


def test_purge_state(backend: RedisBackend, raw: redis.Redis, name: str) -> None:
    uuid = f"task_{name}"
    backend.set_state(TaskState(uuid, State.PENDING, task_name="add", created_at=now_utc()))
    backend.purge_state(uuid)
    assert backend.get_state(uuid) is None and not raw.exists(uuid)


def test_lock_owner_token_and_expiry(redis_url: str, raw: redis.Redis, name: str) -> None:
    one, two = RedisLock.from_url(redis_url, Config()), RedisLock.from_url(redis_url, Config())
    key = f"lock_{name}"
    assert one.acquire(key, 0.3) and not two.acquire(key, 5) and not one.acquire(key, 5)
    two.release(key)  # not the owner: nothing happens
    assert raw.get(key) == one.token
    time.sleep(0.35)
    assert two.acquire(key, 5)
    one.release(key)  # expired and taken over: still not released
    assert raw.get(key) == two.token
    two.release(key)
    assert not raw.exists(key)
    one.close()
    two.close()
