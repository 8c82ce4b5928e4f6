"""URL parsing and client set-up without a server: every form Machinery users write, and the errors."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import quote

import pytest

from machinery import Config
from machinery.errors import ConfigError
from machinery.plugins import get_plugin_manager, resolve_backend, resolve_lock
from machinery_mongodb import MongoBackend, MongoLock, parse_url
from machinery_mongodb.client import MongoConnection
from machinery_mongodb.url import driver_url

SECRET = "s3cret-pw"


def test_single_host_defaults() -> None:
    target = parse_url("mongodb://localhost")
    assert target.hosts == (("localhost", 27017),)
    assert (target.username, target.password, target.database) == (None, None, "")
    assert not target.tls and not target.srv and target.wait == "auto"


def test_credentials_auth_source_and_database() -> None:
    target = parse_url(f"mongodb://app:{SECRET}@db.example.com:27018/results?authSource=admin")
    assert target.hosts == (("db.example.com", 27018),)
    assert (target.username, target.password) == ("app", SECRET)
    assert target.database == "results"
    assert target.options["authsource"] == "admin"
    assert SECRET not in repr(target) and SECRET not in target.describe()


def test_percent_encoded_password() -> None:
    target = parse_url("mongodb://app:p%40ss%2Fw%3Ard@h/")
    assert target.password == "p@ss/w:rd"


def test_replica_set_seed_list() -> None:
    target = parse_url("mongodb://u:p@h1:27017,h2,[::1]:27019/db?replicaSet=rs0&readPreference=primary")
    assert target.hosts == (("h1", 27017), ("h2", 27017), ("::1", 27019))
    assert target.replica_set == "rs0"
    assert target.options["readpreference"] == "primary"


def test_srv_url_parses_without_dns() -> None:
    started = time.monotonic()
    target = parse_url(f"mongodb+srv://app:{SECRET}@cluster0.example.invalid/jobs?retryWrites=true")
    backend = MongoBackend.from_url(target.url, Config())
    assert time.monotonic() - started < 0.5, "no DNS lookup may happen before first use"
    assert target.srv and target.hosts == (("cluster0.example.invalid", 0),)
    assert target.tls, "mongodb+srv:// means TLS unless the URL turns it off"
    assert not parse_url("mongodb+srv://cluster0.example.invalid/?tls=false").tls
    assert backend.conn.database_name == "jobs"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mongodb+srv://a.example.com,b.example.com/", "exactly one host"),
        ("mongodb+srv://a.example.com:27017/", "no port"),
        ("postgres://h/db", "unknown scheme"),
        ("localhost:27017", "expected mongodb://"),
        ("mongodb:///db", "host is missing"),
        ("mongodb://h/db/extra", "expected /<database>"),
        ("mongodb://h/my.db", "may not contain"),
        ("mongodb://h/?wait=sometimes", "wait must be one of"),
        ("mongodb://h/?tls=maybe", "tls"),
        ("mongodb://h/?noSuchOption=1", "Unknown option"),
        ("mongodb://h:99999/", "Port must be"),
        ("mongodb://h/?tls=true&tlsCAFile=/no/such/ca.pem", "not readable|No such file"),
    ],
)
def test_bad_urls_raise_config_errors(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_url(url)


def test_errors_never_show_the_password() -> None:
    for url in (
        f"mongodb://app:{SECRET}@h/?tls=maybe",
        f"mongodb://app:{SECRET}@h/my.db",
        f"mongodb+srv://app:{SECRET}@h:1/",
        f"mongodb://app:{SECRET}@h/?authMechanism=NOPE",
    ):
        with pytest.raises(ConfigError) as info:
            parse_url(url)
        assert SECRET not in str(info.value)


def test_unescaped_password_is_refused() -> None:
    with pytest.raises(ConfigError, match="percent-encode"):
        parse_url("mongodb://app:pa:ss@h/")


def test_database_from_the_setting_when_the_url_has_none() -> None:
    config = Config()
    assert MongoBackend.from_url("mongodb://h", config).conn.database_name == "machinery"
    config.mongodb.database = "jobs"
    assert MongoBackend.from_url("mongodb://h/", config).conn.database_name == "jobs"
    assert MongoBackend.from_url("mongodb://h/other", config).conn.database_name == "other"
    config.mongodb.database = ""
    assert MongoLock.from_url("mongodb://h", config).conn.database_name == "machinery"


def test_driver_url_drops_only_plugin_options(tmp_path: Path) -> None:
    ca = tmp_path / "c a.pem"
    ca.write_text("not read until connecting")
    encoded = quote(str(ca), safe="")
    target = parse_url(f"mongodb://u:p@h/db?wait=poll&authSource=admin&tlsCAFile={encoded}")
    assert target.options["tlscafile"] == str(ca)
    assert driver_url(target) == f"mongodb://u:p@h/db?authSource=admin&tlsCAFile={encoded}"
    assert driver_url(parse_url("mongodb://h/db?wait=poll")) == "mongodb://h/db"


def test_wait_mode_decides_push_wait() -> None:
    assert "push_wait" not in MongoBackend.from_url("mongodb://h", Config()).capabilities
    assert "push_wait" in MongoBackend.from_url("mongodb://h/?wait=change_stream", Config()).capabilities
    assert MongoBackend.from_url("mongodb://h/?wait=poll", Config()).change_streams is False


def test_default_timeouts_yield_to_the_url() -> None:
    options = MongoConnection(parse_url("mongodb://h"), Config()).client_options()
    assert options == {"serverSelectionTimeoutMS": 10_000, "connectTimeoutMS": 5_000}
    mine = MongoConnection(parse_url("mongodb://h/?serverSelectionTimeoutMS=500"), Config())
    assert "serverSelectionTimeoutMS" not in mine.client_options()


def test_tls_files_from_the_config_only_when_the_url_uses_tls(tmp_path: Path) -> None:
    config = Config()
    config.tls.ca_file = "/etc/ca.pem"
    config.tls.cert_file = "/etc/client.pem"
    config.tls.insecure_skip_verify = True
    plain = MongoConnection(parse_url("mongodb://h"), config).client_options()
    assert "tlsCAFile" not in plain
    tls = MongoConnection(parse_url("mongodb://h/?tls=true"), config).client_options()
    assert tls["tlsCAFile"] == "/etc/ca.pem"
    assert tls["tlsCertificateKeyFile"] == "/etc/client.pem"
    assert tls["tlsInsecure"] is True
    own = tmp_path / "own.pem"
    own.write_text("")
    url_wins = MongoConnection(parse_url(f"mongodb://h/?tls=true&tlsCAFile={own}"), config)
    assert "tlsCAFile" not in url_wins.client_options()


def test_separate_key_file_is_a_clear_config_error() -> None:
    config = Config()
    config.tls.cert_file, config.tls.key_file = "/etc/client.crt", "/etc/client.key"
    with pytest.raises(ConfigError, match="one PEM file"):
        MongoConnection(parse_url("mongodb://h/?tls=true"), config).client_options()


def test_plugin_hooks_build_without_io() -> None:
    get_plugin_manager()  # loading the entry points is not part of building
    started = time.monotonic()
    backend = resolve_backend(f"mongodb://app:{SECRET}@127.0.0.1:1/db", Config())
    lock = resolve_lock(f"mongodb+srv://app:{SECRET}@nowhere.invalid/db", Config())
    assert time.monotonic() - started < 0.5
    assert isinstance(backend, MongoBackend) and isinstance(lock, MongoLock)
    assert backend.conn._client is None, "the client is built on first use"
    assert SECRET not in repr(backend) and SECRET not in repr(lock)
    backend.close()
    lock.close()
