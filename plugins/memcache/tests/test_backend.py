"""Backend behaviour beyond the contract kit, on the real servers: expiry in memcached's terms, the
item size limit, keys, exactly-once chords with lost replies and Go's Lock flag, CAS merges, the
adaptive poll, and a dead server."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from pymemcache.client.base import Client  # type: ignore[import-untyped]

from machinery import Config, codec
from machinery.errors import BackendError
from machinery.signature import Arg, GroupMeta, State, TaskState, new_uuid, now_utc
from machinery_memcache import (
    InvalidKeyError,
    MemcacheBackend,
    MemcacheConnectionError,
    MemcacheLock,
    MemcachePermanentError,
    ValueTooLargeError,
)
from machinery_memcache.backend import TRIGGERED_BY
from machinery_memcache.client import THIRTY_DAYS, exptime, gomemcache_index
from machinery_memcache.url import parse_url

pytestmark = pytest.mark.services

DAY = 24 * 3600


def node_of(nodes: list[Client], key: str) -> Client:
    return nodes[gomemcache_index(key.encode(), len(nodes))]


def remaining_ttl(nodes: list[Client], key: str) -> int:
    """Seconds memcached will keep ``key`` (meta command ``mg <key> t``)."""
    reply = node_of(nodes, key).raw_command(f"mg {key} t".encode(), b"\r\n")
    assert reply.startswith(b"HD t"), f"mg {key}: {reply!r}"
    return int(reply[4:])


def backend_with(url: str, **config: Any) -> MemcacheBackend:
    return MemcacheBackend.from_url(url, Config(**config))


# expiry ----------------------------------------------------------------------------------------------
def test_exptime_rule() -> None:
    assert exptime(1) == 2, "one more second than asked: memcached's clock ticks once a second"
    assert exptime(0.2) == 2
    assert exptime(3600) == 3601
    assert exptime(THIRTY_DAYS - 1) == THIRTY_DAYS, "up to 30 days memcached takes relative seconds"
    now = 1_800_000_000.0
    assert exptime(THIRTY_DAYS, now) == int(now) + THIRTY_DAYS + 1, "beyond: a unix time"
    assert exptime(45 * DAY, now) == int(now) + 45 * DAY + 1


@pytest.mark.parametrize("seconds", [3600, 31 * DAY, 400 * DAY])
def test_results_expire_in_reaches_the_server(url: str, nodes: list[Client], seconds: int) -> None:
    backend = backend_with(url, results_expire_in=seconds)
    uuid, group = new_uuid(), new_uuid("group")
    backend.set_state(TaskState(uuid, State.SUCCESS, "add", results=[Arg(1, "int64")]))
    backend.init_group(group, [uuid])
    # a unix time (beyond 30 days) lands on memcached's own clock, which runs up to 2 s apart from the
    # wall clock: seconds matter little at that scale, a misread unix time would be off by decades
    slack = 1 if seconds <= THIRTY_DAYS else 3
    for key in (uuid, group):
        ttl = remaining_ttl(nodes, key)
        assert seconds - 2 <= ttl <= seconds + slack, f"{key}: memcached keeps it {ttl}s, asked {seconds}s"
    backend.close()


def test_default_expiry_is_an_hour(url: str, nodes: list[Client]) -> None:
    backend = backend_with(url)  # results_expire_in=0: Machinery's default 3600
    uuid = new_uuid()
    backend.set_state(TaskState(uuid, State.PENDING, "add"))
    assert 3598 <= remaining_ttl(nodes, uuid) <= 3601


# Go Machinery's records -----------------------------------------------------------------------------
def test_records_written_by_go_are_read(backend: MemcacheBackend, nodes: list[Client]) -> None:
    """Go's TaskState and GroupMeta JSON (reference §3.3), written by hand where gomemcache puts them."""
    task, other, group = new_uuid(), new_uuid(), new_uuid("group")
    go_state = (
        '{"TaskUUID":"TASK","TaskName":"add","State":"SUCCESS","Results":[{"Type":"int64","Value":2}],'
        '"Error":"","CreatedAt":"2025-11-15T12:07:02.1234567Z","TTL":0}'
    ).replace("TASK", task)
    go_meta = (
        (
            '{"GroupUUID":"GROUP","TaskUUIDs":["TASK","OTHER"],"ChordTriggered":false,"Lock":false,'
            '"CreatedAt":"2025-11-15T12:07:02Z","TTL":0}'
        )
        .replace("GROUP", group)
        .replace("TASK", task)
        .replace("OTHER", other)
    )
    node_of(nodes, task).set(task, go_state.encode(), expire=600)
    node_of(nodes, group).set(group, go_meta.encode(), expire=600)
    got = backend.get_state(task)
    assert got is not None and (got.state, got.task_name, got.values) == (State.SUCCESS, "add", [2])
    assert [s.state for s in backend.group_states(group)] == [State.SUCCESS, State.PENDING]
    backend.set_state(TaskState(other, State.FAILURE, error="boom"))
    stored = node_of(nodes, other).get(other)
    for go_key in (b'"TaskUUID":', b'"State":"FAILURE"', b'"Error":"boom"', b'"Results":null', b'"TTL":0'):
        assert go_key in stored, f"{go_key!r} missing from {stored!r}"
    assert backend.trigger_chord(group)


# the item size limit ---------------------------------------------------------------------------------
def test_a_result_over_the_item_limit_is_refused_and_nothing_is_lost(backend: MemcacheBackend) -> None:
    uuid = new_uuid()
    backend.set_state(TaskState(uuid, State.STARTED, "big", created_at=now_utc()))
    huge = TaskState(uuid, State.SUCCESS, "big", results=codec.results_from_return("x" * (2 << 20)))
    with pytest.raises(ValueTooLargeError) as info:
        backend.set_state(huge)
    error = info.value
    assert isinstance(error, MemcachePermanentError) and isinstance(error, BackendError)
    assert uuid in str(error) and "item size limit of 1048576 bytes" in str(error)
    kept = backend.get_state(uuid)
    assert kept is not None and kept.state == State.STARTED, "the refused write must not touch the record"
    with pytest.raises(ValueTooLargeError):
        backend.set_states([TaskState(new_uuid(), State.PENDING, "ok"), huge])


def test_the_servers_own_refusal_is_the_same_error(url: str) -> None:
    # the client-side check is lifted (as if the servers ran with -I 2m): the server refuses instead
    backend = MemcacheBackend.from_url(f"{url}?max_item_size=2m", Config())
    uuid = new_uuid()
    state = TaskState(uuid, State.SUCCESS, "big", results=codec.results_from_return("y" * ((1 << 20) - 10)))
    with pytest.raises(ValueTooLargeError) as info:
        backend.set_state(state)
    assert "larger than the server's item size limit" in str(info.value)
    assert backend.get_state(new_uuid()) is None, "the connection stays usable after the refusal"
    backend.close()


def test_a_group_too_large_for_one_item_is_refused(backend: MemcacheBackend) -> None:
    members = [new_uuid() for _ in range(30_000)]
    with pytest.raises(ValueTooLargeError) as info:
        backend.init_group(new_uuid("group"), members)
    assert "30000 tasks" in str(info.value)


# keys ------------------------------------------------------------------------------------------------
def test_keys_memcached_cannot_store_are_refused_clearly(backend: MemcacheBackend) -> None:
    for bad in ("task with spaces", "task\nnewline", "t" * 251, ""):
        with pytest.raises(InvalidKeyError) as info:
            backend.set_state(TaskState(bad, State.PENDING, "x"))
        assert "cannot be a memcached key" in str(info.value)
    unicode_uuid = "task_ünïcödé_" + new_uuid()  # gomemcache accepts non-ASCII bytes too
    backend.set_state(TaskState(unicode_uuid, State.SUCCESS, "x", results=[Arg(7, "int64")]))
    got = backend.get_state(unicode_uuid)
    assert got is not None and got.values == [7]


def test_lock_names_with_spaces_are_hashed(url: str) -> None:
    name = f"machinery_lock_worker report */5 * * * * {new_uuid()}"
    first, second = MemcacheLock.from_url(url, Config()), MemcacheLock.from_url(url, Config())
    assert first.acquire(name, 30)
    assert not second.acquire(name, 30)
    first.release(name)
    assert second.acquire(name, 30)
    second.release(name)


# merges ----------------------------------------------------------------------------------------------
def test_a_batch_merges_in_order_with_one_read_and_one_write_per_server(
    backend: MemcacheBackend, nodes: list[Client]
) -> None:
    created = now_utc()
    uuids = [new_uuid() for _ in range(10)]
    backend.set_states([TaskState(u, State.PENDING, "add", created_at=created) for u in uuids])
    calls: list[str] = []
    real_run = backend.cluster.run

    def counted(operation: str, server: Any, call: Callable[[Any], Any]) -> Any:
        calls.append(operation)
        return real_run(operation, server, call)

    backend.cluster.run = counted  # type: ignore[method-assign]
    batch = []
    for u in uuids:  # what a busy worker's state writer hands over: several tasks, several states each
        batch += [TaskState(u, State.RECEIVED, "add"), TaskState(u, State.STARTED, "add")]
        batch.append(TaskState(u, State.SUCCESS, "add", results=[Arg(2, "int64")]))
    backend.set_states(batch)
    assert sorted(calls) == ["reading task states to merge"] * 2 + ["storing task states"] * 2, calls
    for u in uuids:
        got = backend.get_state(u)
        assert got is not None and got.state == State.SUCCESS and got.values == [2]
        assert got.task_name == "add" and got.created_at == created, "name and creation time are kept"
    assert all(any(n.get(u) is not None for u in uuids) for n in nodes), "the batch spans both servers"
    calls.clear()
    fresh = [new_uuid() for _ in range(10)]  # sent and run in one batch: nothing stored to merge with
    backend.set_states(
        [TaskState(u, State.PENDING, "add", created_at=created) for u in fresh]
        + [TaskState(u, State.STARTED, "add") for u in fresh]
    )
    assert sorted(calls) == ["storing task states"] * 2, "no read when the batch has the PENDING state"
    assert all(s is not None and s.created_at == created for s in backend.get_states(fresh))


def test_a_first_state_without_a_creation_time_gets_one(backend: MemcacheBackend) -> None:
    uuid = new_uuid()
    before = now_utc()
    backend.set_state(TaskState(uuid, State.STARTED, "add"))
    got = backend.get_state(uuid)
    assert got is not None and got.created_at is not None and got.created_at >= before


# chords ----------------------------------------------------------------------------------------------
def test_a_lost_cas_reply_still_fires_the_chord_once(backend: MemcacheBackend, url: str) -> None:
    group = new_uuid("group")
    backend.init_group(group, [new_uuid()])
    real_cas = backend.cluster.cas

    def cas_lands_but_reply_is_lost(*args: Any, **kwargs: Any) -> bool | None:
        real_cas(*args, **kwargs)
        raise MemcacheConnectionError("memcache test: connection reset after the write")

    backend.cluster.cas = cas_lands_but_reply_is_lost  # type: ignore[method-assign]
    assert backend.trigger_chord(group) is True, "the winner must learn it won from the stored token"
    assert MemcacheBackend.from_url(url, Config()).trigger_chord(group) is False


def test_a_cas_that_never_reached_the_server_is_retried(backend: MemcacheBackend) -> None:
    group = new_uuid("group")
    backend.init_group(group, [new_uuid()])
    real_cas = backend.cluster.cas
    failures = [MemcacheConnectionError("memcache test: connection refused")]

    def fail_once(*args: Any, **kwargs: Any) -> bool | None:
        if failures:
            raise failures.pop()
        return real_cas(*args, **kwargs)

    backend.cluster.cas = fail_once  # type: ignore[method-assign]
    assert backend.trigger_chord(group) is True
    assert backend.trigger_chord(group) is False


def write_go_meta(nodes: list[Client], group: str, *, lock: bool, triggered: bool = False) -> None:
    """A group record as Go Machinery's memcache backend writes it (no extra fields)."""
    meta = GroupMeta(group, [new_uuid()], chord_triggered=triggered, lock=lock, created_at=now_utc())
    node_of(nodes, group).set(group, codec.encode_group_meta(meta), expire=600)


def test_waits_while_a_go_worker_holds_the_lock_flag(backend: MemcacheBackend, nodes: list[Client]) -> None:
    group = new_uuid("group")
    write_go_meta(nodes, group, lock=True)
    answer: list[bool] = []
    thread = threading.Thread(target=lambda: answer.append(backend.trigger_chord(group)))
    thread.start()
    thread.join(0.3)
    assert thread.is_alive() and not answer, "trigger_chord must not act while Go's Lock flag is set"
    write_go_meta(nodes, group, lock=False)  # the Go worker gave up without triggering
    thread.join(5)
    assert answer == [True]
    stored = codec.decode_group_meta(node_of(nodes, group).get(group))
    assert stored.chord_triggered and not stored.lock, "Go must read the flag from the record"


def test_a_chord_go_triggered_is_not_fired_again(backend: MemcacheBackend, nodes: list[Client]) -> None:
    group = new_uuid("group")
    write_go_meta(nodes, group, lock=False, triggered=True)
    assert backend.trigger_chord(group) is False


def test_the_winners_record_stays_go_readable(backend: MemcacheBackend, nodes: list[Client]) -> None:
    group = new_uuid("group")
    members = [new_uuid(), new_uuid()]
    backend.init_group(group, members)
    assert backend.trigger_chord(group)
    raw = node_of(nodes, group).get(group)
    assert TRIGGERED_BY.encode() in raw
    meta = codec.decode_group_meta(raw)  # Go's decoder ignores the extra field the same way
    assert (meta.group_uuid, meta.task_uuids, meta.chord_triggered) == (group, members, True)


# waiting ---------------------------------------------------------------------------------------------
def count_polls(backend: MemcacheBackend) -> list[float]:
    times: list[float] = []
    real: Callable[..., Any] = backend.get_states

    def counted(uuids: Any) -> Any:
        times.append(time.monotonic())
        return real(uuids)

    backend.get_states = counted  # type: ignore[method-assign]
    return times


def test_wait_polls_less_and_less_often(backend: MemcacheBackend) -> None:
    polls = count_polls(backend)
    start = time.monotonic()
    assert backend.wait([new_uuid()], 1.0) == {}
    gaps = [b - a for a, b in itertools.pairwise(polls)]
    assert 8 <= len(polls) <= 20, f"{len(polls)} polls in 1 s"
    assert gaps[0] < 0.05, "the first re-read comes quickly"
    assert max(gaps) <= backend.settings.poll_max + 0.1, "no sleep longer than poll_max"
    assert 0.95 <= time.monotonic() - start < 1.5


def test_wait_sees_a_result_soon_after_it_lands(backend: MemcacheBackend) -> None:
    uuid = new_uuid()
    writer = MemcacheBackend.from_url(backend.target.describe(), Config())
    written: list[float] = []

    def write() -> None:
        writer.set_state(TaskState(uuid, State.SUCCESS, "x"))
        written.append(time.monotonic())

    timer = threading.Timer(0.05, write)
    timer.start()
    found = backend.wait([uuid], 5)
    woke = time.monotonic()
    timer.join()
    assert uuid in found
    # 50 ms into a wait the poll sleeps about 20 ms: the result is seen well within 100 ms
    assert woke - written[0] < 0.1, f"seen {woke - written[0]:.3f}s after it landed"
    writer.close()


# outages ---------------------------------------------------------------------------------------------
def test_an_unreachable_server_fails_fast_naming_it() -> None:
    backend = MemcacheBackend.from_url("memcache://127.0.0.1:1?connect_timeout=1", Config())
    start = time.monotonic()
    with pytest.raises(MemcacheConnectionError) as info:
        backend.get_state(new_uuid())
    assert "memcache 127.0.0.1:1: reading a task state failed" in str(info.value)
    assert time.monotonic() - start < 2
    backend.close()


def test_keys_of_a_dead_server_fail_and_never_move(url: str, nodes: list[Client]) -> None:
    """A third server that is down: its keys raise; the others work and stay where they were."""
    servers = parse_url(url).servers
    dead_url = url + ",127.0.0.1:1?connect_timeout=1"
    backend = MemcacheBackend.from_url(dead_url, Config())
    uuids = [new_uuid() for _ in range(30)]
    on_dead = [u for u in uuids if gomemcache_index(u.encode(), 3) == 2]
    alive = [u for u in uuids if u not in on_dead]
    assert on_dead and alive
    for uuid in alive:
        backend.set_state(TaskState(uuid, State.PENDING, "x"))
        index = gomemcache_index(uuid.encode(), 3)
        assert nodes[index].get(uuid) is not None, f"{uuid} should be on {servers[index]}"
    for uuid in on_dead:
        with pytest.raises(MemcacheConnectionError, match="127.0.0.1:1"):
            backend.set_state(TaskState(uuid, State.PENDING, "x"))
    backend.close()
