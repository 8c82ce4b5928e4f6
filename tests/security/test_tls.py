"""TLS is verified by default on every transport that speaks it: the server's certificate (against
``Config.tls.ca_file``, else the system CAs) and its host name, whatever the client library's version.
Turning verification off takes ``Config.tls.insecure_skip_verify`` and logs a warning once.

Servers: RabbitMQ's TLS listener (``AMQPS_URL``, client certificate required) and the TLS Redis
(``REDISS_URL``, client certificate required) of ``scripts/services``, with its test CA and certificates.
The server certificate names ``127.0.0.1`` and ``localhost``; ``127.1`` is the same loopback address in
inet_aton's short form, so it reaches the server under a name the certificate does not hold. (Redis's
wrong-CA and wrong-host-name cases live in plugins/redis/tests/test_redis_topologies.py.)
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from machinery import Config, Machinery, Signature
from machinery.config import TLSConfig
from machinery.errors import MachineryError
from machinery.testing import require_env

pytestmark = pytest.mark.services  # real servers from scripts/services (TLS Redis/RabbitMQ)

QUEUE = "machinery_security_tls"


def _amqps(host: str = "127.0.0.1") -> str:
    port = urlsplit(require_env("AMQPS_URL", "rabbitmq")).port
    return f"amqps://guest:guest@{host}:{port}/"


def _tls(prefix: str, ca: bool = True, client: bool = True) -> TLSConfig:
    tls = TLSConfig()
    if ca:
        tls.ca_file = require_env(f"{prefix}_TLS_CA")
    if client:
        tls.cert_file = require_env(f"{prefix}_TLS_CERT")
        tls.key_file = require_env(f"{prefix}_TLS_KEY")
    return tls


def _publish(url: str, tls: TLSConfig) -> str:
    """Publish one message on ``url``, then read it back; the task's uuid."""
    app = Machinery(Config(broker=url, result_backend="memory://tls", tls=tls))
    try:
        sig = Signature("tls_probe", routing_key=QUEUE)
        sig.ensure_uuid()
        app.broker.publish(sig)
        deliveries = app.broker.consume(QUEUE, 1, 5.0)
        assert [d.signature.uuid for d in deliveries if d.signature] == [sig.uuid]
        for delivery in deliveries:
            delivery.ack()
        return sig.uuid
    finally:
        app.close()


def _refused(url: str, tls: TLSConfig) -> str:
    """The error text of a publish that must fail."""
    app = Machinery(Config(broker=url, result_backend="memory://tls", tls=tls))
    try:
        with pytest.raises(MachineryError) as info:
            app.broker.publish(Signature("tls_probe", routing_key=QUEUE))
        return str(info.value)
    finally:
        app.close()


@pytest.fixture
def tls_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    from machinery import config as config_module

    warned = set(config_module._insecure_warned)
    config_module._insecure_warned.clear()
    caplog.set_level(logging.WARNING, logger="machinery.tls")
    yield caplog
    config_module._insecure_warned.clear()
    config_module._insecure_warned.update(warned)


# --------------------------------------------------------------------------------------------------
# The context the core builds for plugins (amqp uses it; mongodb, memcache... may)


def test_context_verifies_certificate_and_host_name_by_default() -> None:
    ctx = TLSConfig().ssl_context()
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname is True


def test_insecure_skip_verify_turns_both_off_and_warns_once_per_transport(
    tls_warnings: pytest.LogCaptureFixture,
) -> None:
    tls = TLSConfig(insecure_skip_verify=True)
    for _ in range(3):
        ctx = tls.ssl_context("amqp")
        assert ctx.verify_mode is ssl.CERT_NONE and ctx.check_hostname is False
    tls.ssl_context("mongodb")
    lines = [r.getMessage() for r in tls_warnings.records if r.name == "machinery.tls"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("amqp: TLS verification is OFF") and lines[1].startswith("mongodb:")


# --------------------------------------------------------------------------------------------------
# amqps:// against RabbitMQ's TLS listener


def test_amqps_with_the_right_ca_and_client_certificate_works() -> None:
    assert _publish(_amqps(), _tls("AMQP"))
    assert _publish(_amqps("localhost"), _tls("AMQP"))


def test_amqps_with_the_wrong_ca_is_refused_at_once() -> None:
    text = _refused(_amqps(), _tls("AMQP", ca=False))  # the system CAs do not know the test CA
    assert "CERTIFICATE_VERIFY_FAILED" in text and "ca_file" in text and "guest:guest" not in text


def test_amqps_with_a_host_name_not_in_the_certificate_is_refused() -> None:
    text = _refused(_amqps("127.1"), _tls("AMQP"))
    assert "mismatch" in text.lower() and "name or address in the server's certificate" in text


def test_amqps_without_the_client_certificate_the_server_requires_is_refused() -> None:
    text = _refused(_amqps(), _tls("AMQP", client=False))
    # TLS 1.3 reports the server's refusal after the handshake: as its alert, or as the stream's end
    assert "CERTIFICATE_REQUIRED" in text.upper() or "EOF" in text.upper(), text


def test_amqps_insecure_skip_verify_accepts_any_name_and_warns(
    tls_warnings: pytest.LogCaptureFixture,
) -> None:
    tls = _tls("AMQP")
    tls.insecure_skip_verify = True
    assert _publish(_amqps("127.1"), tls)
    assert any("amqp: TLS verification is OFF" in r.getMessage() for r in tls_warnings.records)


# --------------------------------------------------------------------------------------------------
# rediss:// against the TLS Redis


def _rediss() -> str:
    return require_env("REDISS_URL", "redis-tls")


def test_rediss_without_the_client_certificate_the_server_requires_is_refused() -> None:
    text = _refused(_rediss(), _tls("REDIS", client=False))
    assert "TLS" in text or "SSL" in text.upper(), text


def test_rediss_insecure_skip_verify_warns_once(tls_warnings: pytest.LogCaptureFixture) -> None:
    tls = _tls("REDIS")
    tls.insecure_skip_verify = True
    for _ in range(2):
        assert _publish(_rediss(), tls)
    lines = [r.getMessage() for r in tls_warnings.records if r.name == "machinery.tls"]
    assert len(lines) == 1 and lines[0].startswith("redis: TLS verification is OFF"), lines
