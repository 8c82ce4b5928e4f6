"""URL and settings parsing (no server): server lists, options, clear errors, no password in them."""

from __future__ import annotations

from pathlib import Path

import pytest

from machinery import Config
from machinery.errors import ConfigError, PluginNotFoundError
from machinery.plugins import list_schemes, resolve_backend, resolve_broker, resolve_lock
from machinery_memcache import MemcacheBackend, MemcacheLock, MemcacheSettings, Server, parse_url
from machinery_memcache.settings import MIB


def test_single_server_and_default_port() -> None:
    assert parse_url("memcache://cache.local:11311").servers == (Server("cache.local", 11311),)
    assert parse_url("memcache://cache.local").servers == (Server("cache.local", 11211),)
    assert parse_url("MEMCACHE://h:1/").servers == (Server("h", 1),)


def test_cluster_keeps_url_order_and_duplicates() -> None:
    target = parse_url("memcache://b:2,a:1, c ,b:2")
    assert target.servers == (Server("b", 2), Server("a", 1), Server("c", 11211), Server("b", 2))
    assert target.describe() == "memcache://b:2,a:1,c:11211,b:2"


def test_ipv6_and_unix_socket() -> None:
    target = parse_url("memcache://[::1]:11212,[fe80::1]")
    assert target.servers == (Server("::1", 11212), Server("fe80::1", 11211))
    assert target.describe() == "memcache://[::1]:11212,[fe80::1]:11211"
    sock = parse_url("memcache:///run/memcached/memcached.sock")
    assert sock.servers == (Server("/run/memcached/memcached.sock", 0),)
    assert sock.servers[0].is_socket
    assert sock.describe() == "memcache:///run/memcached/memcached.sock"


def test_options_override_settings() -> None:
    target = parse_url(
        "memcache://h?hashing=rendezvous&timeout=0.5&max_item_size=2m&tls=true&tls_ca=/ca.pem&poll_max=1"
    )
    s = target.settings
    assert (s.hashing, s.timeout, s.max_item_size, s.tls, s.tls_ca, s.poll_max) == (
        "rendezvous",
        0.5,
        2 * MIB,
        True,
        "/ca.pem",
        1.0,
    )
    assert s.tls_verify is True, "TLS must verify the server unless the URL opts out"
    assert parse_url("memcache://h").settings == MemcacheSettings()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://h:6379", "not a memcache URL"),
        ("memcache://", "names no server"),
        ("memcache://h1:11211,,h2", "an empty server"),
        ("memcache://h:port", "invalid port 'port'"),
        ("memcache://h:70000", "invalid port '70000'"),
        ("memcache://::1:11211", "needs brackets"),
        ("memcache://[::1:11211", "bad IPv6 server"),
        ("memcache://h:11211/0", "no path or database"),
        (
            "memcache://h?hashing=ketama",
            "memcache.hashing (env MACHINERY_MEMCACHE_HASHING) must be gomemcache",
        ),
        (
            "memcache://h?timeout=-1",
            "option timeout='-1': memcache.timeout (env MACHINERY_MEMCACHE_TIMEOUT) must be > 0",
        ),
        ("memcache://h?timeout=soon", "option timeout='soon' is not a number"),
        ("memcache://h?tls=maybe", "option tls='maybe' is not a boolean"),
        ("memcache://h?colour=blue", "unknown option 'colour'"),
        ("memcache://h?tls_cert=/c.pem", "memcache.tls_cert / memcache.tls_key need memcache.tls = true"),
        ("memcache://h?poll_min=2&poll_max=1", "memcache.poll_min (2) must not exceed memcache.poll_max (1)"),
        (
            "memcache://h?timeout=inf",
            "URL 'memcache://h?timeout=inf': option timeout='inf' is not a number",
        ),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_url(url)
    assert message in str(info.value)


def test_credentials_are_refused_without_showing_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        parse_url("memcache://admin:hunter2-secret@h:11211")
    assert "no user or password" in str(info.value)
    assert "hunter2-secret" not in str(info.value)


def test_plugin_hooks_build_without_io() -> None:
    # port 1 on localhost: nothing listens, so building must not connect
    config = Config()
    backend = resolve_backend("memcache://127.0.0.1:1,127.0.0.1:2", config)
    assert isinstance(backend, MemcacheBackend)
    assert repr(backend) == "<MemcacheBackend memcache://127.0.0.1:1,127.0.0.1:2>"
    lock = resolve_lock("memcache://127.0.0.1:1", config)
    assert isinstance(lock, MemcacheLock)
    backend.close()
    backend.close()
    lock.close()
    with pytest.raises(PluginNotFoundError):
        resolve_broker("memcache://127.0.0.1:1", config)  # memcached cannot be a broker
    rows = {(r.scheme, r.kind, r.distribution) for r in list_schemes()}
    assert ("memcache", "backend", "machinery-memcache") in rows
    assert ("memcache", "lock", "machinery-memcache") in rows


def test_settings_come_from_env_and_the_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MACHINERY_MEMCACHE_TIMEOUT", "7")
    monkeypatch.setenv("MACHINERY_MEMCACHE_HASHING", "rendezvous")
    config = Config.from_env()
    assert isinstance(config.memcache, MemcacheSettings)
    backend = MemcacheBackend.from_url("memcache://h1,h2?timeout=1.5", config)
    assert (backend.settings.timeout, backend.settings.hashing) == (1.5, "rendezvous")
    assert MemcacheLock.from_url("memcache://h1", config).target.settings.timeout == 7.0


def test_settings_come_from_yaml(tmp_path: Path) -> None:
    pytest.importorskip("yaml")  # machinery-core[yaml]
    yaml_file = tmp_path / "config.yml"
    yaml_file.write_text("memcache:\n  max_item_size: 2097152\n  tls: true\n  tls_ca: /etc/ca.pem\n")
    settings = MemcacheBackend.from_url("memcache://h", Config.from_yaml(str(yaml_file))).settings
    assert (settings.max_item_size, settings.tls, settings.tls_ca) == (2 * MIB, True, "/etc/ca.pem")


def test_config_validation_checks_the_section() -> None:
    config = Config()
    config.memcache.poll_min = 1.0
    config.memcache.poll_max = 0.5
    with pytest.raises(ConfigError, match=r"memcache.poll_min \(1\) must not exceed memcache.poll_max"):
        config.validate()
