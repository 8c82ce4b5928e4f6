"""URL parsing, redaction and plugin wiring: no server needed."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import redis

from machinery import Config, Machinery
from machinery.errors import BrokerError, ConfigError
from machinery.plugins import list_schemes, resolve_backend, resolve_broker, resolve_lock
from machinery_redis import RedisBackend, RedisBroker, RedisLock, parse_url
from machinery_redis.client import Connection, _Health, _retry_policy

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("url", "hosts", "user", "password", "db"),
    [
        ("redis://localhost", (("localhost", 6379),), None, None, 0),
        ("redis://host:6380/2", (("host", 6380),), None, None, 2),
        ("redis://pw@host:6379/0", (("host", 6379),), None, "pw", 0),  # Machinery: lone user-info
        ("redis://:pw@host/3", (("host", 6379),), None, "pw", 3),
        ("redis://alice:pw@host/1", (("host", 6379),), "alice", "pw", 1),
        ("redis://alice:p%40ss%2Fw@host/1", (("host", 6379),), "alice", "p@ss/w", 1),
        ("redis://p@ss@host/0", (("host", 6379),), None, "p@ss", 0),  # raw '@' in a password
        ("redis://[::1]:7000/0", (("::1", 7000),), None, None, 0),
        ("redis://host/?db=5", (("host", 6379),), None, None, 5),
        ("REDIS://host/0", (("host", 6379),), None, None, 0),
    ],
)
def test_redis_url_forms(
    url: str, hosts: tuple[tuple[str, int], ...], user: str | None, password: str | None, db: int
) -> None:
    target = parse_url(url)
    assert target.hosts == hosts
    assert (target.username, target.password, target.db) == (user, password, db)
    assert not target.tls and not target.socket_path and not target.cluster
    if password:
        assert password not in repr(target) and password not in target.describe()


def test_rediss_is_tls_with_query_files() -> None:
    target = parse_url("rediss://pw@host:6380/0?ssl_ca_certs=/ca.pem&ssl_cert_reqs=none")
    assert target.tls and target.tls_params == {"ssl_ca_certs": "/ca.pem", "ssl_cert_reqs": "none"}


@pytest.mark.parametrize(
    ("url", "path", "password", "db"),
    [
        ("redis+socket:///tmp/redis.sock", "/tmp/redis.sock", None, 0),
        ("redis+socket://pw@/tmp/redis.sock", "/tmp/redis.sock", "pw", 0),
        ("redis+socket://user:pw@/var/run/r.sock:/4", "/var/run/r.sock", "pw", 4),
        ("redis+socket:///tmp/redis.sock?db=3", "/tmp/redis.sock", None, 3),
        ("redis+socket:///tmp/a:b.sock", "/tmp/a:b.sock", None, 0),
    ],
)
def test_socket_url_forms(url: str, path: str, password: str | None, db: int) -> None:
    target = parse_url(url)
    assert (target.socket_path, target.password, target.db) == (path, password, db)
    assert target.hosts == ()


def test_cluster_and_sentinel_forms_parse() -> None:
    cluster = parse_url("redis://pw@h1:7000,h2:7001,h3:7002/0")
    assert cluster.cluster and cluster.hosts == (("h1", 7000), ("h2", 7001), ("h3", 7002))
    assert cluster.password == "pw"
    sentinel = parse_url("redis+sentinel://pw@s1:26379,s2/mymaster/2")
    assert sentinel.sentinel and sentinel.master_name == "mymaster" and sentinel.db == 2
    assert sentinel.hosts == (("s1", 26379), ("s2", 26379))


def test_cluster_forms_build_without_io_and_refuse_what_a_cluster_cannot_do() -> None:
    # Machinery's comma list, or one seed node with Config.redis.cluster_mode: no I/O at construction
    broker = RedisBroker.from_url(f"redis://{SECRET}@h1:7000,h2:7001/0", Config())
    assert broker.cluster and broker.conn.cluster
    config = Config()
    config.redis.cluster_mode = True
    assert RedisBackend.from_url("redis://h1:7000", config).conn.cluster
    assert not RedisBackend.from_url("redis://h1:7000", Config()).conn.cluster
    with pytest.raises(ConfigError, match="only database 0") as info:
        RedisBroker.from_url(f"redis://{SECRET}@h1:7000,h2:7001/3", Config())
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigError, match="unix socket"):
        RedisLock.from_url("redis+socket:///tmp/r.sock", config)


def test_cluster_key_layout_keeps_a_queue_in_its_slot() -> None:
    from redis.crc import key_slot

    from machinery_redis.broker import queue_keys

    for queue in ("machinery_tasks", "orders{eu}", "a.b:c"):
        keys = queue_keys(queue, cluster=True)
        slot = key_slot(queue.encode())
        names = [keys.registry, keys.redelivered, keys.priority, keys.priority_seq, keys.dead, keys.wake]
        names += [keys.processing("c1"), keys.heartbeat("c1"), keys.delayed("delayed_tasks")]
        assert {key_slot(n.encode()) for n in names} == {slot}, queue
    assert queue_keys("q", cluster=True).dead == "{q}.dead"
    assert queue_keys("q").dead == "q.dead"  # one server: unchanged
    assert queue_keys("q", cluster=True).delayed("delayed_tasks") == "{q}:delayed_tasks"
    for bad in ("a{}b", "a}b", "a{b"):
        with pytest.raises(ConfigError, match="hash tag"):
            queue_keys(bad, cluster=True)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://host:port/0", "port"),
        ("redis://host:99999/0", "port"),
        (f"redis://{SECRET}@host/zero", "database"),
        (f"redis://{SECRET}@host/0?bogus=1", "unknown parameter"),
        (f"redis://{SECRET}@host/0?lease=-1", "lease"),
        (f"redis://{SECRET}@host/0?priority=maybe", "true or false"),
        ("redis+socket://relative.sock", "absolute"),
        (f"redis+sentinel://{SECRET}@host:26379", "master name"),
        ("mysql://host/0", "scheme"),
        ("localhost:6379", "scheme"),
    ],
)
def test_bad_urls_are_clear_and_never_show_the_password(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        RedisBroker.from_url(url, Config())
    assert problem in str(info.value)
    assert SECRET not in str(info.value)


def test_broker_options_from_url_and_validation() -> None:
    broker = RedisBroker.from_url(
        "redis://h/0?lease=10&heartbeat=2&priority=yes&delayed_tasks_mover=off", Config()
    )
    assert (broker.lease, broker.heartbeat, broker.priority, broker.delayed_tasks_mover) == (
        10,
        2,
        True,
        False,
    )
    assert "priority" in broker.capabilities
    assert "priority" not in RedisBroker.from_url("redis://h/0", Config()).capabilities
    with pytest.raises(ConfigError, match="half the lease"):
        RedisBroker.from_url("redis://h/0?lease=2&heartbeat=1.5", Config())


def test_plugin_is_registered_for_every_scheme() -> None:
    rows = set(list_schemes())
    for scheme in ("redis", "rediss", "redis+socket", "redis+sentinel"):
        for kind in ("broker", "backend", "lock"):
            assert (scheme, kind, "machinery-redis") in rows
    config = Config()
    assert isinstance(resolve_broker("redis://localhost:6379/0", config), RedisBroker)
    assert isinstance(resolve_backend("rediss://localhost:6380/0", config), RedisBackend)
    assert isinstance(resolve_lock("redis+socket:///tmp/x.sock", config), RedisLock)
    assert resolve_broker.__module__  # the sqlite/memory built-ins are untouched


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_construction_does_no_io_and_unreachable_is_clear() -> None:
    port = _free_port()  # nothing listens there
    url = f"redis://user:{SECRET}@127.0.0.1:{port}/0"
    app = Machinery(Config(broker=url, result_backend=url))  # no connection attempted
    assert isinstance(app.broker, RedisBroker)
    config = Config()
    config.redis.connect_timeout = 1
    broker = RedisBroker.from_url(url, config)
    with pytest.raises(BrokerError) as info:
        broker.publish_raw("q", b"x")
    text = str(info.value)
    assert "unreachable" in text and f"127.0.0.1:{port}" in text and SECRET not in text
    broker.close()
    app.close()


def test_config_maps_to_redis_py_settings() -> None:
    config = Config()
    config.redis.read_timeout, config.redis.write_timeout, config.redis.connect_timeout = 3, 7, 2
    config.redis.max_active, config.redis.wait, config.redis.idle_timeout = 5, True, 60
    config.redis.client_name = "machinery-test"
    conn = Connection(parse_url("redis://pw@host:1234/3"), config, BrokerError)
    pool = conn.client.connection_pool
    assert isinstance(pool, redis.BlockingConnectionPool) and pool.max_connections == 5
    kwargs = pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (7.0, 2.0)
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == ("host", 1234, 3, "pw")
    assert (kwargs["health_check_interval"], kwargs["client_name"]) == (60, "machinery-test")
    tls = Connection(parse_url("rediss://host/0?ssl_cert_reqs=none"), Config(), BrokerError)
    tls_kwargs = tls.client.connection_pool.connection_kwargs
    assert tls_kwargs["ssl_cert_reqs"] == "none" and tls_kwargs["ssl_check_hostname"] is False
    sock = Connection(parse_url("redis+socket:///tmp/r.sock:/2"), Config(), BrokerError)
    assert sock.client.connection_pool.connection_kwargs["path"] == "/tmp/r.sock"


def test_tls_host_name_check_is_explicit() -> None:
    """redis-py 5.x does not check the host name by default, 6.0+ does: the plugin always says which."""

    def tls_kwargs(url: str, config: Config) -> dict[str, Any]:
        kwargs: dict[str, Any] = Connection(
            parse_url(url), config, BrokerError
        ).client.connection_pool.connection_kwargs
        return kwargs

    assert tls_kwargs("rediss://host/0", Config())["ssl_check_hostname"] is True
    insecure = Config()
    insecure.tls.insecure_skip_verify = True
    kwargs = tls_kwargs("rediss://host/0", insecure)
    assert kwargs["ssl_check_hostname"] is False and kwargs["ssl_cert_reqs"] == "none"
    assert tls_kwargs("rediss://host/0?ssl_check_hostname=false", Config())["ssl_check_hostname"] is False
    assert "ssl_check_hostname" not in tls_kwargs("redis://host/0", Config())


def test_retry_policy_takes_a_failed_health_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """redis-py 8 hands a failed health-check PING to a handler that takes the failure count (5.3 does not):
    the plugin's retry policy serves both, so the PING is retried instead of a TypeError."""
    health = _Health("test", window=5.0)
    health.reached = True
    retry = _retry_policy(health, retrying=True)
    conn = redis.Connection(host="127.0.0.1", port=_free_port(), retry=retry, health_check_interval=1)
    pings: list[int] = []

    def ping() -> None:
        pings.append(1)
        if len(pings) == 1:
            raise redis.ConnectionError("connection reset by peer")

    monkeypatch.setattr(conn, "_send_ping", ping)
    conn.next_health_check = -1.0  # due now
    conn.check_health()
    assert len(pings) == 2


def test_user_client_is_used_and_not_closed() -> None:
    config = Config()
    client = redis.Redis(host="127.0.0.1", port=_free_port())
    config.redis.client = client
    broker = RedisBroker.from_url("redis://ignored:1/0", config)
    assert broker.conn.client is client
    broker.close()
    assert config.redis.client is client
    config.redis.client = object()
    with pytest.raises(ConfigError, match=r"redis\.Redis"):
        RedisBackend.from_url("redis://h/0", config)


def test_sentinel_over_tls_keeps_sentinel_managed_connections() -> None:
    from redis.sentinel import SentinelManagedSSLConnection

    config = Config()
    config.redis.master_name = "mymaster"
    conn = Connection(parse_url("rediss://s1:26379,s2:26379/2"), config, BrokerError)
    assert conn.master_name == "mymaster" and not conn.cluster
    assert conn._kwargs(True)["connection_class"] is SentinelManagedSSLConnection


def test_retry_window_from_the_url() -> None:
    assert Connection(parse_url("redis://h/0"), Config(), BrokerError).retry_window == 15.0
    assert Connection(parse_url("redis://h/0?retry_window=40"), Config(), BrokerError).retry_window == 40.0
    with pytest.raises(ConfigError, match="retry_window"):
        parse_url("redis://h/0?retry_window=-1")
