"""URLs, plugin registration, and connection failures (wrong password, wrong vhost, nothing listening)."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit, urlunsplit

import pytest
from amqp_testlib import Admin, Names, amqp_url_or_skip

from machinery import Config, Machinery, Signature
from machinery.errors import BackendError, BrokerError, ConfigError
from machinery.plugins import list_schemes, resolve_backend, resolve_broker
from machinery_amqp import AMQPAccessError, AMQPBackend, AMQPBroker, AMQPUnavailableError
from machinery_amqp.connection import connection_parameters, split_urls


def with_userinfo(url: str, user: str, password: str, path: str | None = None) -> str:
    parts = urlsplit(url)
    netloc = f"{user}:{password}@{parts.hostname}:{parts.port or 5672}"
    return urlunsplit((parts.scheme, netloc, parts.path if path is None else path, parts.query, ""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------- no server needed
def test_plugin_registers_both_schemes() -> None:
    rows = {(r.scheme, r.kind, r.distribution) for r in list_schemes()}
    for scheme in ("amqp", "amqps"):
        for kind in ("broker", "backend"):
            assert (scheme, kind, "machinery-amqp") in rows


def test_from_url_does_no_io() -> None:
    """Nothing listens on this port; building must still be instant."""
    url = f"amqp://u:p@127.0.0.1:{free_port()}/"
    start = time.monotonic()
    config = Config(broker=url, result_backend=url)
    broker = resolve_broker(url, config)
    backend = resolve_backend(url, config)
    app = Machinery(config)
    assert isinstance(broker, AMQPBroker) and isinstance(backend, AMQPBackend)
    assert isinstance(app.broker, AMQPBroker)
    assert time.monotonic() - start < 0.5
    for thing in (broker, backend, app):
        thing.close()


def test_failover_list_and_tls_parameters() -> None:
    config = Config(multiple_broker_separator=" ")
    urls = split_urls("amqp://a:b@h1:5672/vh  amqps://a:b@h2/%2f", config)
    assert urls == ["amqp://a:b@h1:5672/vh", "amqps://a:b@h2/%2f"]
    p1, p2 = connection_parameters(urls, config, "test")
    assert (p1.host, p1.port, p1.virtual_host, p1.ssl_options) == ("h1", 5672, "vh", None)
    assert (p2.host, p2.port, p2.virtual_host) == ("h2", 5671, "/")
    assert p2.ssl_options is not None
    assert p1.heartbeat == 30 and p1.connection_attempts == 1
    [p3] = connection_parameters(["amqp://h3/?heartbeat=7"], config, "test")
    assert p3.heartbeat == 7 and p3.virtual_host == "/"
    with pytest.raises(ConfigError):
        split_urls("amqp://h1 redis://h2", config)


def test_repr_hides_the_password() -> None:
    broker = AMQPBroker("amqp://guest:hunter2@localhost:5672/", Config())
    assert "hunter2" not in repr(broker)


def test_errors_are_broker_and_backend_errors() -> None:
    assert issubclass(AMQPAccessError, BrokerError) and issubclass(AMQPAccessError, BackendError)


def test_nothing_listening_fails_fast_and_clearly() -> None:
    url = f"amqp://guest:topsecret@127.0.0.1:{free_port()}/"
    broker = AMQPBroker(url, Config(), retry_timeout=1.0)
    start = time.monotonic()
    with pytest.raises(AMQPUnavailableError) as info:
        broker.publish(Signature("add", [1]))
    assert time.monotonic() - start < 5
    assert "127.0.0.1" in str(info.value) and "topsecret" not in str(info.value)
    with pytest.raises(AMQPUnavailableError) as info2:
        for _ in range(5):
            broker.consume("q", 1, 0.5)
    assert "topsecret" not in str(info2.value)
    broker.close()


# ------------------------------------------------------------------------------------- with RabbitMQ
@pytest.mark.services
@pytest.mark.parametrize("kind", ["password", "vhost"])
def test_refused_login_or_vhost_is_clear_and_quick(kind: str) -> None:
    url = amqp_url_or_skip()
    secret = "wr0ng-S3cret"
    if kind == "password":
        bad = with_userinfo(url, "guest", secret)
        expected = "refused the login"
    else:
        user, password = urlsplit(url).username or "guest", urlsplit(url).password or "guest"
        bad = with_userinfo(url, user, password, path="/no_such_vhost")
        expected = "virtual host"
    config = Config(broker=bad, result_backend=bad)
    for component in (AMQPBroker(bad, config), AMQPBackend(bad, config)):
        start = time.monotonic()
        with pytest.raises(AMQPAccessError) as info:
            if isinstance(component, AMQPBroker):
                component.publish(Signature("add", [1]))
            else:
                component.get_state("task_x")
        assert time.monotonic() - start < 5
        assert expected in str(info.value)
        assert secret not in str(info.value)
        component.close()
    broker = AMQPBroker(bad, config)
    start = time.monotonic()
    with pytest.raises(AMQPAccessError) as info:
        broker.consume("q", 1, 2.0)
    assert time.monotonic() - start < 5
    assert secret not in str(info.value)
    broker.close()


@pytest.mark.services
def test_failover_to_the_second_url(make_config, names: Names, admin: Admin) -> None:  # type: ignore[no-untyped-def]
    url = amqp_url_or_skip()
    config = make_config()
    config.multiple_broker_separator = ","
    broker = AMQPBroker(f"amqp://guest:guest@127.0.0.1:{free_port()}/,{url}", config)
    try:
        broker.publish(Signature("add", [1], uuid="task_f"))
        [d] = broker.consume(names.queue, 1, 5.0)
        assert d.signature is not None and d.signature.uuid == "task_f"
        d.ack()
    finally:
        broker.close()
