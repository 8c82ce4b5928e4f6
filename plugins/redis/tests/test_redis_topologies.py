"""The other topologies against scripts/services: rediss:// (TLS), Sentinel (with a failover mid-run)
and Redis Cluster (the key layout; the contract kit runs on all of them in
test_contract.py, as are the unix socket and redis/redis).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from redis.crc import key_slot
from redis_testlib import TEST_DB, require_env, server_unavailable

from machinery import Config, Machinery
from machinery.errors import BackendError, BrokerError
from machinery.signature import Signature, now_utc
from machinery_redis import RedisBackend, RedisBroker, scripts

pytestmark = pytest.mark.services


def _roundtrip(config: Config, name: str) -> int:
    config.default_queue = name
    config.redis.delayed_tasks_key = f"{name}:delayed"
    app = Machinery(config)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    worker = app.worker(concurrency=2)
    thread = worker.launch_async()
    try:
        value: int = app.send_task(add.s(4, 3)).get(timeout=15)
    finally:
        worker.quit()
        thread.join(10)
        app.close()
    return value


def _tls_url() -> str:
    parts = urlsplit(require_env("REDISS_URL"))
    return f"rediss://{parts.netloc}/{TEST_DB}"


def test_tls_with_config_files(name: str) -> None:
    url = _tls_url()
    config = Config(broker=url, result_backend=url)
    config.tls.ca_file = require_env("REDIS_TLS_CA")
    config.tls.cert_file = require_env("REDIS_TLS_CERT")
    config.tls.key_file = require_env("REDIS_TLS_KEY")
    assert _roundtrip(config, name) == 7


def test_tls_with_query_parameters(name: str) -> None:
    url = (
        f"{_tls_url()}?ssl_ca_certs={require_env('REDIS_TLS_CA')}&ssl_certfile={require_env('REDIS_TLS_CERT')}"
        f"&ssl_keyfile={require_env('REDIS_TLS_KEY')}"
    )
    assert _roundtrip(Config(broker=url, result_backend=url), name) == 7


def test_tls_with_a_wrong_ca_is_a_clear_error() -> None:
    parts = urlsplit(require_env("REDISS_URL"))
    url = f"rediss://:not-the-pw-123@{parts.netloc}/{TEST_DB}"
    config = Config()
    config.tls.cert_file = require_env("REDIS_TLS_CERT")
    config.tls.key_file = require_env("REDIS_TLS_KEY")
    system_ca = "/etc/ssl/certs/ca-certificates.crt"
    config.tls.ca_file = system_ca if os.path.exists(system_ca) else require_env("REDIS_TLS_CERT")
    app = Machinery(Config(broker=url, result_backend=url, tls=config.tls))
    with pytest.raises(BrokerError) as info:
        app.broker.publish(app.register_task("add", lambda: None).s())
    text = str(info.value)
    assert "TLS" in text and "ca_file" in text and "not-the-pw-123" not in text
    app.close()


def _tls_files() -> Config:
    config = Config()
    config.tls.ca_file = require_env("REDIS_TLS_CA")
    config.tls.cert_file = require_env("REDIS_TLS_CERT")
    config.tls.key_file = require_env("REDIS_TLS_KEY")
    return config


def test_tls_checks_the_servers_host_name(name: str) -> None:
    """The server certificate of scripts/services names 127.0.0.1 and localhost. ``127.1`` is the same
    loopback address in inet_aton's short form, so the connection reaches the server, but it is not a
    name in the certificate: refused with every redis-py (5.x does not check host names by default)."""
    port = urlsplit(require_env("REDISS_URL")).port
    by_name = f"rediss://localhost:{port}/{TEST_DB}"
    assert _roundtrip(Config(broker=by_name, result_backend=by_name, tls=_tls_files().tls), name) == 7

    wrong = f"rediss://127.1:{port}/{TEST_DB}"
    app = Machinery(Config(broker=wrong, result_backend=wrong, tls=_tls_files().tls))
    try:
        with pytest.raises(BrokerError) as info:
            app.broker.publish(app.register_task("add", lambda: None).s())
    finally:
        app.close()
    text = str(info.value)
    assert "mismatch" in text and "name or address in the server's certificate" in text, text


def test_tls_insecure_skip_verify_accepts_any_host_name(name: str) -> None:
    port = urlsplit(require_env("REDISS_URL")).port
    wrong = f"rediss://127.1:{port}/{TEST_DB}"
    config = Config(broker=wrong, result_backend=wrong, tls=_tls_files().tls)
    config.tls.insecure_skip_verify = True
    assert _roundtrip(config, name) == 7


def test_sentinel_url(name: str) -> None:
    parts = urlsplit(require_env("REDIS_SENTINEL_URL"))
    master = parts.path.strip("/").split("/")[0]
    url = f"redis+sentinel://{parts.netloc}/{master}/{TEST_DB}"
    assert _roundtrip(Config(broker=url, result_backend=url), name) == 7


def test_sentinel_through_master_name_like_go(name: str) -> None:
    parts = urlsplit(require_env("REDIS_SENTINEL_URL"))
    url = f"redis://{parts.netloc}/{TEST_DB}"  # the sentinels' addresses
    config = Config(broker=url, result_backend=url)
    config.redis.master_name = parts.path.strip("/").split("/")[0]
    assert _roundtrip(config, name) == 7


# Sentinel failover ---------------------------------------------------------------------------------
def _sentinel() -> redis.Redis:
    host, _, port = require_env("REDIS_SENTINEL_ADDR").rpartition(":")
    return redis.Redis(host=host, port=int(port), decode_responses=True, socket_timeout=5)


def _master_name() -> str:
    return urlsplit(require_env("REDIS_SENTINEL_URL")).path.strip("/").split("/")[0]


def _master_of(sentinel: redis.Redis, master: str) -> tuple[str, int]:
    host, port = sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", master)
    return str(host), int(port)


def _replica_ready(sentinel: redis.Redis, master: str) -> bool:
    """The sentinel sees a replica in sync with the current master (a failover can pick it)."""
    for replica in sentinel.execute_command("SENTINEL", "REPLICAS", master):
        info = replica if isinstance(replica, dict) else dict(zip(replica[::2], replica[1::2], strict=True))
        flags = str(info.get("flags", ""))
        if "s_down" not in flags and "disconnected" not in flags and info.get("master-link-status") == "ok":
            return True
    return False


def _wait(what: str, check: Any, timeout: float) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture
def sentinel_ready() -> Iterator[tuple[redis.Redis, str]]:
    """The sentinel, once the topology is settled (a previous run's failover may still be ending:
    nothing assumes which server is the master)."""
    sentinel = _sentinel()
    master = _master_name()
    try:
        sentinel.ping()
    except redis.RedisError as exc:
        server_unavailable(f"the sentinel at {require_env('REDIS_SENTINEL_ADDR')} does not answer: {exc}")
    _wait("a replica in sync for a failover", lambda: _replica_ready(sentinel, master), 60)
    yield sentinel, master
    sentinel.close()


def _failover(sentinel: redis.Redis, master: str) -> None:
    """``SENTINEL FAILOVER``, retried while a previous failover still settles (INPROG, NOGOODSLAVE)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            sentinel.execute_command("SENTINEL", "FAILOVER", master)
            return
        except redis.ResponseError as exc:
            if time.monotonic() > deadline or not any(x in str(exc) for x in ("INPROG", "NOGOODSLAVE")):
                raise
            time.sleep(0.5)


BEFORE = 600


@pytest.mark.slow
def test_sentinel_failover_mid_run_loses_nothing(
    name: str, sentinel_ready: tuple[redis.Redis, str], caplog: pytest.LogCaptureFixture
) -> None:
    """SENTINEL FAILOVER while a worker runs tasks: every task sent before and after completes; the
    producer, the worker and the result waits reconnect to the new master by themselves."""
    caplog.set_level(logging.INFO, logger="machinery.redis")
    sentinel, master = sentinel_ready
    parts = urlsplit(require_env("REDIS_SENTINEL_URL"))
    url = f"redis+sentinel://{parts.netloc}/{master}/{TEST_DB}"
    config = Config(broker=f"{url}?lease=2&heartbeat=0.5", result_backend=url)
    config.default_queue = name
    config.redis.delayed_tasks_key = f"{name}:delayed"
    config.redis.normal_tasks_poll_period = 200
    config.worker.poll_timeout = 0.2
    config.no_unix_signals = True
    app = Machinery(config)
    runs: dict[int, int] = {}
    runs_lock = threading.Lock()

    @app.task
    def slow_add(x: int, y: int) -> int:
        time.sleep(0.02)
        with runs_lock:
            runs[x] = runs.get(x, 0) + 1
        return x + y

    worker = app.worker(concurrency=4)
    thread = worker.launch_async()
    try:
        old = _master_of(sentinel, master)
        epoch = app.broker.conn.epoch  # type: ignore[attr-defined]
        # about 3 s of work at 4 x 50 tasks/s: the worker is busy across the whole failover
        before = app.send_tasks([slow_add.s(i, 1000) for i in range(BEFORE)])
        time.sleep(0.1)
        started = time.monotonic()
        _failover(sentinel, master)
        switched = _wait("the sentinel names a new master", lambda: _master_of(sentinel, master) != old, 30)
        new = _master_of(sentinel, master)
        # the client hears of it (the sentinel's +switch-master) and leaves the old master at once
        noticed = _wait(
            "the client noticing the failover",
            lambda: app.broker.conn.epoch > epoch,  # type: ignore[attr-defined]
            15,
        )
        probe = app.send_task(slow_add.s(10_000, 1))
        reconnected = time.monotonic() - started
        after = [app.send_task(slow_add.s(i, 1000)) for i in range(BEFORE, BEFORE + 100)]
        results = [r.get(timeout=60) for r in [*before, probe, *after]]
        assert results == [i + 1000 for i in range(BEFORE)] + [10_001] + [
            i + 1000 for i in range(BEFORE, BEFORE + 100)
        ]
    finally:
        worker.quit()
        thread.join(15)
        app.close()
    repeated = sum(1 for count in runs.values() if count > 1)
    print(
        f"failover {old[1]} -> {new[1]}: the sentinel switched after {switched:.2f} s, the client noticed "
        f"{noticed:.2f} s later, the producer was through {reconnected:.2f} s after SENTINEL FAILOVER; "
        f"{repeated} task(s) ran twice (at least once), none lost"
    )
    assert any("master moved" in r.getMessage() for r in caplog.records)


# Redis Cluster -----------------------------------------------------------------------------------
def _cluster_url(query: str = "") -> str:
    return f"redis://{require_env('REDIS_CLUSTER_NODES')}/0" + (f"?{query}" if query else "")


def _adding_app(config: Config) -> Machinery:
    """An app on ``config`` (no signal handlers) with the task ``add(*values)``."""
    config.no_unix_signals = True
    app = Machinery(config)

    @app.task
    def add(*values: int) -> int:
        return sum(values)

    return app


@pytest.fixture
def cluster() -> Iterator[redis.cluster.RedisCluster]:
    host, _, port = require_env("REDIS_CLUSTER_NODES").split(",")[0].rpartition(":")
    try:
        client = redis.cluster.RedisCluster(host=host, port=int(port))
    except Exception as exc:
        server_unavailable(
            f"Redis Cluster at {host}:{port} does not answer ({exc}): scripts/services start redis-cluster"
        )
    yield client
    client.close()


def test_cluster_layout_go_queue_uuid_keys_and_tagged_extras(
    cluster: redis.cluster.RedisCluster, name: str
) -> None:
    """Go's keys where a Go worker or client reads them (the queue list, the bare uuid state keys); the
    keys Go does not share carry the queue's hash tag; a delayed task sits in the queue's own ZSET."""
    config = Config()
    config.redis.delayed_tasks_poll_period = 50
    broker = RedisBroker.from_url(_cluster_url("lease=2&heartbeat=0.5"), config)
    backend = RedisBackend.from_url(_cluster_url(), config)
    try:
        broker.publish(Signature("add", uuid=f"{name}-1", routing_key=name, args=[]))
        assert cluster.llen(name) == 1  # Go's list, named by the routing key
        broker.publish(
            Signature("add", uuid=f"{name}-2", routing_key=name, eta=now_utc() + timedelta(seconds=30))
        )
        delayed = f"{{{name}}}:delayed_tasks"
        assert cluster.zcard(delayed) == 1 and key_slot(delayed.encode()) == key_slot(name.encode())
        assert [s.uuid for s in broker.delayed() if s.routing_key == name] == [f"{name}-2"]
        (delivery,) = broker.consume(name, 1, 1.0)
        processing = broker.processing(name)
        assert processing == [delivery.body]
        delivery.nack(requeue=False)
        assert [x.body for x in broker.dead_letters(name)] == [delivery.body]
        assert cluster.llen(f"{{{name}}}.dead") == 1
        # states: Go's bare uuid keys, one slot each; a group's members read across slots
        from machinery.signature import State, TaskState

        uuids = [f"{name}-s{i}" for i in range(20)]
        assert len({key_slot(u.encode()) for u in uuids}) > 1
        backend.init_group(f"{name}-g", uuids)
        backend.set_states([TaskState(u, State.SUCCESS, "add") for u in uuids])
        assert json.loads(cluster.get(uuids[0]) or b"{}")["State"] == "SUCCESS"
        assert [s.state for s in backend.group_states(f"{name}-g")] == [State.SUCCESS] * 20
        assert backend.trigger_chord(f"{name}-g") is True
        assert backend.trigger_chord(f"{name}-g") is False
        assert not cluster.exists("TriggerChordMutex")  # Go's mutex: taken and released
        assert set(backend.wait(uuids, 1.0)) == set(uuids)
        broker.purge(name)
        assert cluster.llen(name) == 0 and cluster.zcard(delayed) == 0
    finally:
        broker.close()
        backend.close()


def test_cluster_chord_waits_for_go_holding_its_mutex(cluster: redis.cluster.RedisCluster, name: str) -> None:
    """A Go worker holding ``TriggerChordMutex`` (redsync) keeps a Python trigger out until it lets go."""
    backend = RedisBackend.from_url(_cluster_url(), Config())
    try:
        backend.init_group(f"{name}-g", [f"{name}-a"])
        cluster.set("TriggerChordMutex", "go-token", px=400)
        started = time.monotonic()
        assert backend.trigger_chord(f"{name}-g") is True
        assert time.monotonic() - started >= 0.3
        assert not cluster.exists("TriggerChordMutex")
    finally:
        backend.close()


def test_cluster_send_tasks_of_a_large_batch(cluster: redis.cluster.RedisCluster, name: str) -> None:
    """A batch large enough to be streamed on one server: on a cluster every PENDING state on its uuid's
    node, every message in the queue, in order."""
    from machinery_redis.broker import STATES_PER_CHUNK

    config = Config(broker=_cluster_url(), result_backend=_cluster_url(), default_queue=name)
    app = Machinery(config)
    results = []
    try:
        results = app.send_tasks([Signature("add", [n]) for n in range(STATES_PER_CHUNK * 2 + 5)])
        assert all(json.loads(cluster.get(r.uuid) or b"{}")["State"] == "PENDING" for r in results)
        assert [json.loads(b)["UUID"] for b in cluster.lrange(name, 0, -1)] == [r.uuid for r in results]
    finally:
        app.close()
        cluster.delete(name)
        for r in results:
            cluster.delete(r.uuid)


def test_cluster_errors_are_clear(name: str) -> None:
    with pytest.raises(BrokerError, match="unreachable") as info:
        RedisBroker.from_url("redis://:cl-secret-77@127.0.0.1:1,127.0.0.1:2/0", Config()).publish(
            Signature("add", uuid=name, routing_key=name)
        )
    assert "cl-secret-77" not in str(info.value)
    nodes = require_env("REDIS_CLUSTER_NODES")
    with pytest.raises(BackendError, match="refused the credentials") as info2:
        RedisBackend.from_url(f"redis://nobody:cl-secret-78@{nodes}/0", Config()).get_state(name)
    assert "cl-secret-78" not in str(info2.value)


def test_cluster_worker_runs_a_go_producers_eta_task(cluster: redis.cluster.RedisCluster, name: str) -> None:
    """On a cluster Python keeps its ETAs in each queue's own ZSET, but a Go producer still writes Go's
    global ``delayed_tasks``: a Python worker moves those too (claimed, then pushed: at least once)."""
    golden = Path(__file__).parent / "golden"
    delayed_key = f"{name}:delayed"  # this test's own "delayed_tasks"
    url = _cluster_url("lease=2&heartbeat=0.5")
    config = Config(broker=url, result_backend=url, default_queue=name)
    config.redis.delayed_tasks_key = delayed_key
    config.redis.delayed_tasks_poll_period = 100
    app = _adding_app(config)
    uuid = f"task_go_{name}"
    eta = now_utc() + timedelta(seconds=0.5)
    body = (golden / "go_message.json").read_text().strip().replace("@UUID@", uuid).replace("@QUEUE@", name)
    body = body.replace('"ETA":null', f'"ETA":"{eta.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}"')
    cluster.zadd(delayed_key, {body: int(eta.timestamp() * 1e9)})  # as Go's producer does
    assert [s.uuid for s in app.broker.delayed() if s.routing_key == name] == [uuid]
    worker = app.worker(concurrency=2)
    thread = worker.launch_async()
    try:
        assert app.backend.wait([uuid], 10)[uuid].values == [2]
        assert time.time() >= eta.timestamp()
    finally:
        worker.quit()
        thread.join(10)
        app.close()
    assert cluster.zcard(delayed_key) == 0
    assert not list(cluster.scan_iter(match=f"{{{delayed_key}}}:machinery:moving:*"))


def test_cluster_a_dead_movers_claims_go_back(cluster: redis.cluster.RedisCluster, name: str) -> None:
    """A mover that died between claiming Go's due messages and pushing them: once its heartbeat is
    gone, the next mover puts them back into the ZSET and moves them."""
    delayed_key = f"{name}:delayed"
    tag = "{" + delayed_key + "}"
    config = Config(default_queue=name)
    config.redis.delayed_tasks_key = delayed_key
    broker = RedisBroker.from_url(_cluster_url(), config)
    try:
        body = json.dumps({"UUID": f"{name}-x", "Name": "add", "RoutingKey": name, "Args": []})
        cluster.rpush(f"{tag}:machinery:moving:dead-mover", body)
        cluster.sadd(f"{tag}:machinery:movers", "dead-mover")  # and no heartbeat key: it died
        assert broker.move_go_delayed() >= 0
        assert cluster.lrange(name, 0, -1) == [body.encode()]
        assert not cluster.exists(f"{tag}:machinery:moving:dead-mover")
        assert cluster.smembers(f"{tag}:machinery:movers") == set()
    finally:
        broker.close()


def test_cluster_a_fast_workers_result_is_not_overwritten_by_pending(
    cluster: redis.cluster.RedisCluster, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """send_tasks stores the PENDING states before the messages are visible, on a cluster too: a worker
    that takes a message the moment it is pushed and stores its result at once must not have that result
    overwritten by a PENDING state still on its way to another node (the result then stayed PENDING
    until the waiter's timeout). Deterministic: the first task's state is on the queue's node and the
    second's on another, and the "worker" stores its result right after the message is sent."""
    from machinery.signature import State, TaskState
    from machinery_redis import _redispy

    def node_of(key: str) -> str:
        return str(cluster.nodes_manager.get_node_from_slot(key_slot(key.encode())).name)

    uuids = [f"{name}-{i}" for i in range(200)]
    first = next(u for u in uuids if node_of(u) == node_of(name))
    second = next(u for u in uuids if node_of(u) != node_of(name))
    config = Config(broker=_cluster_url(), result_backend=_cluster_url(), default_queue=name)
    app = Machinery(config)
    worker_backend = RedisBackend.from_url(_cluster_url(), config)
    send = _redispy.send_commands
    pushed: list[bool] = []

    def send_then_finish_at_once(conn: Any, commands: Any) -> None:
        send(conn, commands)
        if not pushed and any(c[0] == "RPUSH" and c[1] == name for c in commands):
            pushed.append(True)  # (set before: the worker's own write comes through here too)
            worker_backend.set_state(TaskState(second, State.SUCCESS, "add", results=[]))

    monkeypatch.setattr(_redispy, "send_commands", send_then_finish_at_once)
    try:
        app.send_tasks([Signature("add", [1], uuid=first), Signature("add", [2], uuid=second)])
        assert pushed
        stored = worker_backend.get_state(second)
        assert stored is not None and stored.state is State.SUCCESS, stored
    finally:
        app.close()
        worker_backend.close()
        cluster.delete(name, first, second)


def test_cluster_a_uuid_with_braces_is_refused_and_never_wedges_a_worker(
    cluster: redis.cluster.RedisCluster, name: str
) -> None:
    """A brace in a uuid is a hash tag to Redis Cluster, so the state key and the keys built beside it
    would be in different slots. Sending one is refused with a clear error; one that arrives anyway (a
    producer that skipped the check) is dead-lettered, and the worker goes on with the next task."""
    from machinery.errors import MessageError, PermanentError

    app = _adding_app(Config(broker=_cluster_url(), result_backend=_cluster_url(), default_queue=name))
    bad = f"task_{{{name}}}x"
    with pytest.raises(MessageError, match="contains a brace"):
        app.send_task(Signature("add", [1, 2], uuid=bad))
    with pytest.raises(MessageError, match="contains a brace"):
        app.backend.wait([bad], 0.1)
    with pytest.raises(MessageError, match="group uuid"):
        app.backend.init_group("{g}", [name])
    app.broker.publish(Signature("add", [1, 2], uuid=bad))  # the message reaches the queue anyway
    worker = app.worker(concurrency=2)
    thread = worker.launch_async()
    try:
        assert app.send_task(Signature("add", [2, 2])).get(timeout=15) == 4
        letters = app.broker.dead_letters(name)  # type: ignore[attr-defined]
        deadline = time.monotonic() + 10
        while not letters and time.monotonic() < deadline:
            time.sleep(0.05)
            letters = app.broker.dead_letters(name)  # type: ignore[attr-defined]
        assert [json.loads(x.body)["UUID"] for x in letters] == [bad]
        assert "contains a brace" in letters[0].reason
    finally:
        worker.quit()
        thread.join(10)
        app.close()
        cluster.delete(name, f"{{{name}}}:machinery:dead")
    # any command whose keys a cluster puts in different slots is a permanent error (never retried)
    backend = RedisBackend.from_url(_cluster_url(), app.config)
    try:
        with pytest.raises(PermanentError, match="same key slot"):  # redis-py's check, before sending
            backend.conn.call("a cross-slot read", lambda: backend.conn.client.mget(["a", "b", "c"]))
        [reply] = backend.conn.run([scripts.WAIT_MARK.command(["a", "b", "c"], [5, 10])])  # the server's
        assert isinstance(reply, Exception)
        refused = backend.conn.error("a cross-slot script", reply)
        assert isinstance(refused, PermanentError) and "same slot" in str(refused)
    finally:
        backend.close()
