"""The Redis broker against the real server: Go's key layout, at-least-once, bounded prefetch, delays."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from machinery import Config, Machinery
from machinery.errors import BrokerError
from machinery.signature import Signature, State, now_utc
from machinery_redis import RedisBroker
from machinery_redis.broker import queue_keys

pytestmark = pytest.mark.services

GOLDEN = Path(__file__).parent / "golden"
#: Every key of a Go Machinery task message, in Go's field order (reference §3.2).
GO_KEYS = [
    "UUID",
    "Name",
    "RoutingKey",
    "ETA",
    "GroupUUID",
    "GroupTaskCount",
    "Args",
    "Headers",
    "Priority",
    "Immutable",
    "RetryCount",
    "RetryTimeout",
    "OnSuccess",
    "OnError",
    "ChordCallback",
    "BrokerMessageGroupId",
    "SQSReceiptHandle",
    "StopTaskDeletionOnError",
    "IgnoreWhenTaskNotRegistered",
]


def make_config(name: str) -> Config:
    config = Config(default_queue=name)
    config.redis.delayed_tasks_key = f"{name}:delayed"
    config.redis.delayed_tasks_poll_period = 50
    config.worker.shutdown_grace = 5.0
    config.no_unix_signals = True
    return config


@pytest.fixture
def config(name: str) -> Config:
    return make_config(name)


@pytest.fixture
def broker(redis_url: str, config: Config, raw: redis.Redis, name: str) -> Iterator[RedisBroker]:
    broker = RedisBroker.from_url(redis_url + "?lease=2&heartbeat=0.5", config)
    yield broker
    broker.close()
    keys = list(raw.scan_iter(match=f"*{name}*"))
    if keys:
        raw.delete(*keys)


def sig(name: str, *args: Any, **fields: Any) -> Signature:
    s = Signature("add", list(args), routing_key=name, **fields)
    s.ensure_uuid()
    return s


# ---------------------------------------------------------------------------------------------------------
# Go Machinery's layout


def test_publish_is_one_rpush_of_go_json(broker: RedisBroker, raw: redis.Redis, name: str) -> None:
    s = sig(name, 1, 2)
    broker.publish(s)
    assert raw.type(name) == b"list"
    (body,) = raw.lrange(name, 0, -1)
    message = json.loads(body)
    assert list(message) == GO_KEYS
    assert message["Args"] == [
        {"Name": "", "Type": "int64", "Value": 1},
        {"Name": "", "Type": "int64", "Value": 2},
    ]
    assert message["UUID"] == s.uuid and message["RoutingKey"] == name
    assert message["ETA"] is None and message["Headers"] == {} and message["OnSuccess"] is None
    assert isinstance(message["Priority"], int) and isinstance(message["Immutable"], bool)


def test_eta_goes_to_the_delayed_zset_with_ns_scores(
    broker: RedisBroker, raw: redis.Redis, name: str
) -> None:
    eta = now_utc() + timedelta(hours=1)
    s = sig(name, 1, 1, eta=eta)
    broker.publish(s)
    ((member, score),) = raw.zrange(f"{name}:delayed", 0, -1, withscores=True)
    message = json.loads(member)
    assert list(message) == GO_KEYS and message["UUID"] == s.uuid
    assert message["ETA"].endswith("Z")
    assert abs(score - eta.timestamp() * 1e9) < 1e4  # Go: ETA.UnixNano()
    assert [d.uuid for d in broker.delayed()] == [s.uuid]
    assert raw.llen(name) == 0


def test_a_message_written_by_hand_as_go_does_is_run(redis_url: str, raw: redis.Redis, name: str) -> None:
    """Reference §3.2/§3.3: a Go producer's message, pushed raw, runs on a Python worker, and the
    result at the bare task uuid has Go's TaskState shape."""
    config = make_config(name)
    app = Machinery(Config(broker=redis_url, result_backend=redis_url, default_queue=name), broker=None)
    app.config.redis.delayed_tasks_key = config.redis.delayed_tasks_key

    @app.task
    def add(*values: int) -> int:
        return sum(values)

    uuid = f"task_go_{name}"
    pending = (GOLDEN / "go_state_pending.json").read_text().strip().replace("@UUID@", uuid)
    raw.set(uuid, pending, ex=600)  # Go's producer stores PENDING first (§3.5)
    body = (GOLDEN / "go_message.json").read_text().strip()
    raw.rpush(name, body.replace("@UUID@", uuid).replace("@QUEUE@", name))
    worker = app.worker(concurrency=2)
    thread = worker.launch_async()
    try:
        assert app.backend.wait([uuid], 10)[uuid].values == [2]
    finally:
        worker.quit()
        thread.join(10)
        app.close()
    stored = json.loads(raw.get(uuid))
    golden = json.loads((GOLDEN / "go_state_success.json").read_text().replace("@UUID@", uuid))
    assert list(stored) == list(golden)  # Go's field order, every key present
    assert stored == golden  # CreatedAt and TaskName kept from the PENDING state, as Go merges
    assert 0 < raw.ttl(uuid) <= 3600


# ---------------------------------------------------------------------------------------------------------
# fetching


def test_consume_never_takes_more_than_asked_and_leaves_the_rest(
    broker: RedisBroker, raw: redis.Redis, name: str
) -> None:
    broker.publish_many([sig(name, i, 0) for i in range(10)])
    got = broker.consume(name, 3, 1.0)
    assert [d.signature.arg_values[0] for d in got if d.signature] == [0, 1, 2]
    assert raw.llen(name) == 7
    assert raw.llen(queue_keys(name).processing(broker._leases[name].consumer)) == 3
    for d in got:
        d.ack()
    broker.flush_acks()
    assert broker.processing(name) == []


def test_one_round_trip_per_batch(broker: RedisBroker, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    broker.publish_many([sig(name, i, 0) for i in range(8)])
    broker.consume(name, 1, 1.0)[0].ack()  # registers the consumer, runs the first recovery
    calls: list[int] = []
    run = broker.conn.run
    me = threading.get_ident()

    def counting(commands: Any, **kw: Any) -> Any:
        if threading.get_ident() == me:  # not the broker's heartbeat thread, which shares the connection
            calls.append(len(commands))
        return run(commands, **kw)

    monkeypatch.setattr(broker.conn, "run", counting)
    got = broker.consume(name, 5, 1.0)
    assert len(got) == 5
    assert len(calls) == 1, "a batch must be fetched in one round trip"
    assert calls[0] == 3  # the pending ack, BLMOVE, the TAKE script
    broker.ack_many(got)
    broker.consume(name, 2, 1.0)
    assert len(calls) == 2 and calls[1] == 5 + 2  # the acks travel with the next fetch


def test_blocking_fetch_wakes_on_publish_without_polling(
    broker: RedisBroker, redis_url: str, config: Config, name: str
) -> None:
    producer = RedisBroker.from_url(redis_url, config)
    timer = threading.Timer(0.3, lambda: producer.publish(sig(name, 1, 1)))
    start = time.monotonic()
    timer.start()
    got = broker.consume(name, 4, 5.0)
    elapsed = time.monotonic() - start
    producer.close()
    assert len(got) == 1 and 0.25 < elapsed < 2.0


def test_nack_requeue_goes_to_the_head_marked_redelivered(broker: RedisBroker, name: str) -> None:
    broker.publish_many([sig(name, i, 0) for i in range(3)])
    first = broker.consume(name, 1, 1.0)[0]
    assert not first.redelivered
    first.nack()
    again = broker.consume(name, 3, 1.0)
    assert [d.signature.arg_values[0] for d in again if d.signature] == [0, 1, 2]
    assert [d.redelivered for d in again] == [True, False, False]
    broker.ack_many(again)


def test_the_server_counts_each_return_of_a_message(broker: RedisBroker, name: str) -> None:
    """delivery_count (the worker's delivery budget) rises with every return, on the server."""
    broker.publish(sig(name, 1, 0))
    counts = []
    for _ in range(3):
        [got] = broker.consume(name, 1, 1.0)
        counts.append(got.delivery_count)
        got.nack()
    [last] = broker.consume(name, 1, 1.0)
    assert [*counts, last.delivery_count] == [1, 2, 3, 4]
    last.ack()


def test_nack_with_delay_and_dead_letters(broker: RedisBroker, raw: redis.Redis, name: str) -> None:
    broker.publish_many([sig(name, 1, 0), sig(name, 2, 0)])
    one, two = broker.consume(name, 2, 1.0)
    start = time.monotonic()
    one.nack(requeue=True, delay=0.5)
    assert raw.zcard(f"{name}:delayed") == 1
    before = datetime.now(UTC)
    two.nack(requeue=False, reason="poison")
    [dead] = broker.dead_letters(name)
    assert (dead.body, dead.reason, dead.queue, dead.delivery_count) == (two.body, "poison", name, 1)
    assert before - timedelta(seconds=1) <= dead.time <= datetime.now(UTC)
    assert dead in broker.dead_letters(None, limit=100_000), "dead_letters() without a queue misses it"
    back = broker.consume(name, 1, 5.0)
    assert len(back) == 1 and back[0].body == one.body and back[0].redelivered
    assert time.monotonic() - start >= 0.45
    back[0].ack()


def test_malformed_message_is_a_delivery_with_an_error(broker: RedisBroker, name: str) -> None:
    broker.publish_raw(name, b"{not json")
    (d,) = broker.consume(name, 1, 1.0)
    assert d.signature is None and d.error and d.body == b"{not json"
    d.nack(requeue=False)
    assert [x.body for x in broker.dead_letters(name)] == [b"{not json"]


def test_delayed_tasks_come_out_in_eta_order_not_early(broker: RedisBroker, name: str) -> None:
    base = now_utc() + timedelta(seconds=0.6)
    etas = {3: base + timedelta(seconds=0.3), 1: base, 2: base + timedelta(seconds=0.15)}
    broker.publish_many([sig(name, k, 0, eta=eta) for k, eta in etas.items()])
    assert [s.arg_values[0] for s in broker.delayed()] == [1, 2, 3]
    got = []
    deadline = time.monotonic() + 10
    while len(got) < 3 and time.monotonic() < deadline:
        for d in broker.consume(name, 3, 1.0):
            assert d.signature is not None
            arrived = now_utc()
            assert arrived >= etas[d.signature.arg_values[0]], "delivered before its ETA"
            got.append(d.signature.arg_values[0])
            d.ack()
    assert got == [1, 2, 3]


def test_due_tasks_move_in_eta_order_in_one_pass(broker: RedisBroker, raw: redis.Redis, name: str) -> None:
    past = now_utc() - timedelta(seconds=10)
    for k in (5, 3, 4, 1, 2):
        raw.zadd(f"{name}:delayed", {json.dumps({"RoutingKey": name, "N": k}): past.timestamp() * 1e9 + k})
    broker.move_delayed()
    assert [json.loads(b)["N"] for b in raw.lrange(name, 0, -1)] == [1, 2, 3, 4, 5]


def test_delayed_mover_can_be_switched_off(
    redis_url: str, config: Config, name: str, raw: redis.Redis
) -> None:
    off = RedisBroker.from_url(redis_url + "?delayed_tasks_mover=false", config)
    off.publish(sig(name, 1, 1, eta=now_utc() + timedelta(seconds=0.2)))
    assert off.consume(name, 1, 1.0) == []
    assert not off._movers and raw.zcard(f"{name}:delayed") == 1
    off.close()


def test_pending_and_purge(broker: RedisBroker, name: str) -> None:
    broker.publish_many([sig(name, i, 0) for i in range(3)])
    broker.publish(sig(name, 9, 9, eta=now_utc() + timedelta(hours=1)))
    broker.publish(sig(f"{name}x", 8, 8, eta=now_utc() + timedelta(hours=1)))
    assert [s.arg_values[0] for s in broker.pending(name)] == [0, 1, 2]
    broker.purge(name)
    assert broker.pending(name) == []
    assert [s.routing_key for s in broker.delayed()] == [f"{name}x"]  # only this queue's delayed ones


def test_priority_is_opt_in_and_priority_zero_stays_go_compatible(
    redis_url: str, config: Config, raw: redis.Redis, name: str
) -> None:
    broker = RedisBroker.from_url(redis_url + "?priority=true", config)
    broker.publish_many([sig(name, 0, 0), sig(name, 1, 0, priority=3), sig(name, 2, 0, priority=7)])
    assert raw.llen(name) == 1  # priority 0: the plain list a Go worker reads
    got = broker.consume(name, 3, 1.0)
    assert [d.signature.priority for d in got if d.signature] == [7, 3, 0]
    broker.ack_many(got)
    broker.close()


# ---------------------------------------------------------------------------------------------------------
# at least once

HOLDER = textwrap.dedent(
    """
    import sys, time
    from machinery import Config
    from machinery_redis import RedisBroker
    url, queue, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = Config(default_queue=queue)
    config.redis.delayed_tasks_key = queue + ":delayed"
    broker = RedisBroker.from_url(url + "?lease=1&heartbeat=0.25", config)
    held = []
    while len(held) < count:
        held += broker.consume(queue, count - len(held), 1.0)
    print("held", len(held), flush=True)
    time.sleep(3600)
    """
)


def _start_holder(redis_url: str, name: str, count: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, redis_url, name, str(count)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == f"held {count}", line
    return proc


def test_sigkilled_consumer_messages_come_back_exactly_once(
    redis_url: str, config: Config, raw: redis.Redis, name: str
) -> None:
    producer = RedisBroker.from_url(redis_url, config)
    producer.publish_many([sig(name, i, 0) for i in range(6)])
    holder = _start_holder(redis_url, name, 4)
    assert raw.llen(name) == 2
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    killed = time.monotonic()
    # two live consumers race to recover and consume
    consumers = [RedisBroker.from_url(redis_url + "?lease=1&heartbeat=0.25", config) for _ in range(2)]
    seen: list[int] = []
    redelivered: list[bool] = []
    lock = threading.Lock()

    def consume(broker: RedisBroker) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(seen) < 6:
            for d in broker.consume(name, 2, 0.5):
                assert d.signature is not None
                with lock:
                    seen.append(d.signature.arg_values[0])
                    redelivered.append(d.redelivered)
                d.ack()

    threads = [threading.Thread(target=consume, args=(b,)) for b in consumers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recovered_after = time.monotonic() - killed
    for b in (*consumers, producer):
        b.close()
    assert sorted(seen) == list(range(6)), f"lost or duplicated: {seen}"
    assert redelivered.count(True) == 4
    assert recovered_after < 1 + 0.25 + 5  # lease + heartbeat + one recovery interval
    assert raw.scard(queue_keys(name).registry) == 0  # the dead consumer was unregistered


def test_recovery_is_exactly_once_under_a_race(
    redis_url: str, config: Config, raw: redis.Redis, name: str
) -> None:
    producer = RedisBroker.from_url(redis_url, config)
    producer.publish_many([sig(name, i, 0) for i in range(20)])
    holder = _start_holder(redis_url, name, 20)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    time.sleep(1.2)  # the heartbeat key expires
    recoverers = [RedisBroker.from_url(redis_url, config) for _ in range(8)]
    moved: list[int] = []
    barrier = threading.Barrier(len(recoverers))

    def recover(b: RedisBroker) -> None:
        barrier.wait()
        moved.append(b.recover(name))

    threads = [threading.Thread(target=recover, args=(b,)) for b in recoverers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(moved) == [0] * 7 + [20]
    assert sorted(json.loads(b)["Args"][0]["Value"] for b in raw.lrange(name, 0, -1)) == list(range(20))
    for b in (*recoverers, producer):
        b.close()


def test_a_long_task_is_not_redelivered_while_its_process_lives(
    redis_url: str, config: Config, name: str
) -> None:
    holder = RedisBroker.from_url(redis_url + "?lease=1.5&heartbeat=0.25", config)
    other = RedisBroker.from_url(redis_url + "?lease=1.5&heartbeat=0.25", config)
    holder.publish(sig(name, 1, 1))
    (held,) = holder.consume(name, 1, 1.0)
    deadline = time.monotonic() + 4.5  # 3 leases
    while time.monotonic() < deadline:
        assert other.consume(name, 1, 0.5) == [], "redelivered while its consumer was alive"
        other.recover(name)
    held.ack()
    holder.close()
    other.close()


def test_close_returns_unsettled_messages_at_once(
    broker: RedisBroker, redis_url: str, config: Config, name: str
) -> None:
    broker.publish_many([sig(name, i, 0) for i in range(3)])
    got = broker.consume(name, 3, 1.0)
    got[0].ack()
    broker.close()
    other = RedisBroker.from_url(redis_url, config)
    back = other.consume(name, 3, 1.0)
    assert sorted(d.signature.arg_values[0] for d in back if d.signature) == [1, 2]
    assert all(d.redelivered for d in back)
    other.ack_many(back)
    other.close()


# ---------------------------------------------------------------------------------------------------------
# server restart


@pytest.mark.slow
def test_producer_and_worker_survive_a_server_restart(redis_url: str, raw: redis.Redis, name: str) -> None:
    from redis_testlib import restart_redis

    config = make_config(name)
    config.result_backend = config.broker = redis_url + "?lease=2&heartbeat=0.5"
    app = Machinery(config)
    done: set[int] = set()
    lock = threading.Lock()

    @app.task
    def record(n: int) -> int:
        time.sleep(0.01)
        with lock:
            done.add(n)
        return n

    worker = app.worker(concurrency=4)
    thread = worker.launch_async()
    results = [app.send_task(record.s(i)) for i in range(50)]
    restart_redis()
    results += [app.send_task(record.s(i)) for i in range(50, 100)]  # the producer reconnects
    try:
        values = [r.get(timeout=60) for r in results]
    finally:
        worker.quit()
        thread.join(15)
        app.close()
    assert values == list(range(100)) and done == set(range(100))
    assert all(app.backend.get_state(r.uuid).state is State.SUCCESS for r in results[:1])  # type: ignore[union-attr]


class _RoundTrips:
    """Counts the round trips of a Connection (wraps ``run``)."""

    def __init__(self, conn: Any) -> None:
        self.count = 0
        self._run = conn.run

        def run(commands: Any, **kwargs: Any) -> Any:
            self.count += 1
            return self._run(commands, **kwargs)

        conn.run = run


def _clean(raw: redis.Redis, name: str) -> None:
    keys = list(raw.scan_iter(match=f"*{name}*"))
    if keys:
        raw.delete(*keys)


def _app(broker_url: str, backend_url: str, name: str) -> Machinery:
    config = make_config(name)
    config.broker, config.result_backend = broker_url, backend_url
    return Machinery(config)


def test_send_task_stores_pending_and_publishes_in_one_round_trip(
    redis_url: str, raw: redis.Redis, name: str
) -> None:
    app = _app(redis_url, redis_url, name)
    trips = _RoundTrips(app.broker.conn)  # type: ignore[attr-defined]
    try:
        result = app.send_task(Signature("add", [1, 2]))
        later = app.send_task(Signature("add", [3], eta=now_utc() + timedelta(hours=1)))
        batch = app.send_tasks([Signature("add", [n]) for n in range(5)])
        assert trips.count == 3
        for uuid in [result.uuid, later.uuid, *(r.uuid for r in batch)]:
            assert json.loads(raw.get(uuid))["State"] == State.PENDING
        queued = [json.loads(body)["UUID"] for body in raw.lrange(name, 0, -1)]
        assert queued == [result.uuid, *(r.uuid for r in batch)]
        delayed = [json.loads(m)["UUID"] for m in raw.zrange(app.config.redis.delayed_tasks_key, 0, -1)]
        assert delayed == [later.uuid]
    finally:
        app.close()
        _clean(raw, name)


def test_send_task_on_another_database_writes_the_state_there(
    redis_url: str, raw: redis.Redis, name: str
) -> None:
    """A backend on another database (or server) is not the broker's: two round trips, each where it
    belongs."""
    from redis_testlib import TEST_DB, with_db

    other = with_db(redis_url, TEST_DB + 1)
    app = _app(redis_url, other, name)
    trips = _RoundTrips(app.broker.conn)  # type: ignore[attr-defined]
    other_raw = redis.Redis.from_url(other)
    try:
        result = app.send_task(Signature("add", [1, 2]))
        assert trips.count == 1  # the publish; the state went through the backend's own connection
        assert raw.get(result.uuid) is None
        assert json.loads(other_raw.get(result.uuid))["State"] == State.PENDING
        assert json.loads(raw.lpop(name))["UUID"] == result.uuid
    finally:
        app.close()
        other_raw.delete(result.uuid)
        other_raw.close()
        _clean(raw, name)


def test_an_error_reply_to_a_state_write_is_raised(redis_url: str, raw: redis.Redis, name: str) -> None:
    """The states and the publish share a pipeline: an error reply to any of them reaches the caller."""
    app = _app(redis_url, redis_url, name)
    try:
        raw.set(f"{name}-taken", "x")
        with pytest.raises(BrokerError, match="WRONGTYPE"):
            app.broker.publish_with_states(  # type: ignore[attr-defined]
                [Signature("add", [1], routing_key=name)], [], _WrongTypeBackend(app.backend, f"{name}-taken")
            )
    finally:
        app.close()
        _clean(raw, name)


class _WrongTypeBackend:
    """A backend on the same server whose state command fails (an RPUSH on a string key)."""

    def __init__(self, backend: Any, key: str) -> None:
        self.target = backend.target
        self._key = key

    def state_commands(self, states: Any) -> list[tuple[Any, ...]]:
        return [("RPUSH", self._key, "z")]


@pytest.mark.parametrize("parser", ["hiredis", "python"])
@pytest.mark.parametrize("protocol", [2, 3])
def test_replies_keep_their_order_and_their_errors(
    redis_url: str, raw: redis.Redis, name: str, parser: str, protocol: int
) -> None:
    """A round's replies, read from hiredis's buffer or through redis-py, one per command in order:
    error replies in their places, replies larger than one socket read (a GET of 200 KB) between small
    ones, and on RESP3 the push messages in between (client-side caching invalidations) left out."""
    from redis._parsers import _HiredisParser, _RESP2Parser, _RESP3Parser

    from machinery_redis import _redispy

    parser_class = _HiredisParser if parser == "hiredis" else (_RESP2Parser, _RESP3Parser)[protocol - 2]
    pool = redis.ConnectionPool.from_url(redis_url, parser_class=parser_class, protocol=protocol)
    conn = pool.get_connection()
    big = os.urandom(100_000).hex().encode()
    commands: list[tuple[Any, ...]] = [("SET", f"{name}:big", big), ("SET", f"{name}:s", "x")]
    expected: list[Any] = ["OK", "OK"]
    # redis-py < 6 with hiredis < 3.2 cannot tell a push from a reply (its own read_response neither)
    pushes_known = parser == "python" or hasattr(_HiredisParser, "handle_push_response")
    if protocol == 3 and pushes_known:  # each SET of a key this connection read sends it an invalidation push
        commands.append(("CLIENT", "TRACKING", "ON"))
        expected.append("OK")
    for i in range(2000):
        if i % 97 == 0:
            commands.append(("LPUSH", f"{name}:s", "y"))  # WRONGTYPE: a string
            expected.append(redis.ResponseError)
        elif i % 101 == 0:
            commands += [("GET", f"{name}:big"), ("SET", f"{name}:big", big)]
            expected += [big, "OK"]
        else:
            commands.append(("INCR", f"{name}:n"))
            expected.append(sum(1 for c in commands if c[0] == "INCR"))
    try:
        _redispy.send_commands(conn, commands)
        replies = _redispy.read_replies(conn, len(commands))
        assert _redispy.read_replies(conn, 0) == []
        assert len(replies) == len(expected)
        for i, (reply, want) in enumerate(zip(replies, expected, strict=True)):
            if want is redis.ResponseError:
                assert isinstance(reply, redis.ResponseError) and "WRONGTYPE" in str(reply), i
            elif want == "OK":
                assert reply in (b"OK", "OK", True), i
            else:
                assert reply == want, i
        conn.send_command("PING")  # nothing left unread: the next reply is this command's
        assert conn.read_response() in (b"PONG", "PONG", True)
    finally:
        pool.release(conn)
        pool.disconnect()
        raw.delete(f"{name}:big", f"{name}:s", f"{name}:n")


def _streams(conn: Any) -> list[int]:
    """Counts the batches ``conn`` streams (wraps ``run_streamed``)."""
    calls: list[int] = []
    streamed = conn.run_streamed

    def run_streamed(chunks: Any) -> Any:
        calls.append(1)
        return streamed(chunks)

    conn.run_streamed = run_streamed
    return calls


def test_a_large_batch_streams_its_states_then_publishes_every_message(
    redis_url: str, raw: redis.Redis, name: str
) -> None:
    """More tasks than one chunk of states: one streamed round trip, every PENDING state stored, every
    message queued in order, an ETA in the delayed set."""
    from machinery_redis.broker import STATES_PER_CHUNK

    count = STATES_PER_CHUNK * 2 + 5
    app = _app(redis_url, redis_url, name)
    streams = _streams(app.broker.conn)  # type: ignore[attr-defined]
    trips = _RoundTrips(app.broker.conn)  # type: ignore[attr-defined]
    try:
        sigs = [Signature("add", [n]) for n in range(count)]
        sigs[7].eta = now_utc() + timedelta(hours=1)
        results = app.send_tasks(sigs)
        assert streams == [1] and trips.count == 0
        states = raw.mget([r.uuid for r in results])
        assert all(json.loads(s)["State"] == State.PENDING for s in states)
        queued = [json.loads(body)["UUID"] for body in raw.lrange(name, 0, -1)]
        assert queued == [r.uuid for i, r in enumerate(results) if i != 7]
        delayed = [json.loads(m)["UUID"] for m in raw.zrange(app.config.redis.delayed_tasks_key, 0, -1)]
        assert delayed == [results[7].uuid]
    finally:
        app.close()
        _clean(raw, name)


def test_a_bad_message_in_a_large_batch_publishes_nothing(
    redis_url: str, raw: redis.Redis, name: str
) -> None:
    """A message that cannot be encoded is found before any message of the batch is sent, and the
    connection is left clean for the next batch."""
    from machinery.errors import MessageError
    from machinery_redis.broker import STATES_PER_CHUNK

    count = STATES_PER_CHUNK * 2 + 5
    app = _app(redis_url, redis_url, name)
    try:
        sigs = [Signature("add", [n]) for n in range(count)]
        sigs[-3].priority = 300  # Go's uint8: refused by the encoder
        with pytest.raises(MessageError, match="priority"):
            app.send_tasks(sigs)
        assert raw.llen(name) == 0
        results = app.send_tasks([Signature("add", [n]) for n in range(count)])
        assert [json.loads(b)["UUID"] for b in raw.lrange(name, 0, -1)] == [r.uuid for r in results]
    finally:
        app.close()
        _clean(raw, name)


def test_a_streamed_batch_is_sent_again_whole_when_its_connection_drops(
    redis_url: str, raw: redis.Redis, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection drops after the first chunk of states went out: the rest of the batch is built,
    and the whole batch sent again on a new connection (states are plain SETs; no message had been
    sent, so each is queued once)."""
    import socket

    from machinery_redis.backend import RedisBackend
    from machinery_redis.broker import STATES_PER_CHUNK

    count = STATES_PER_CHUNK * 3
    app = _app(redis_url, redis_url, name)
    pool = app.broker.conn.client.connection_pool  # type: ignore[attr-defined]
    built = RedisBackend.state_commands
    calls: list[int] = []

    def dropping(self: RedisBackend, states: Any) -> list[tuple[Any, ...]]:
        calls.append(len(states))
        if len(calls) == 2:  # the first chunk was sent on the connection in use: drop it
            (conn,) = pool._in_use_connections
            conn._sock.shutdown(socket.SHUT_RDWR)
        return built(self, states)

    monkeypatch.setattr(RedisBackend, "state_commands", dropping)
    conn = app.broker.conn  # type: ignore[attr-defined]
    again: list[int] = []
    plain_round = conn._round

    def counting_round(client: Any, commands: Any, stream: Any = None) -> Any:
        if stream is None:
            again.append(len(commands))
        return plain_round(client, commands, stream)

    conn._round = counting_round
    try:
        results = app.send_tasks([Signature("add", [n]) for n in range(count)])
        assert calls == [STATES_PER_CHUNK] * 3, "each chunk is built once"
        assert again == [count + 1], "the whole batch (its states and one RPUSH) was sent again"
        states = raw.mget([r.uuid for r in results])
        assert all(json.loads(s)["State"] == State.PENDING for s in states)
        assert [json.loads(b)["UUID"] for b in raw.lrange(name, 0, -1)] == [r.uuid for r in results]
    finally:
        app.close()
        _clean(raw, name)
