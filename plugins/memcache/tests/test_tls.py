"""TLS (memcached ``-Z``) on a memcached of the test's own, with the test CA of ``scripts/services``:
the server certificate is verified unless the URL opts out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from memcache_testlib import own_memcached, require_env, server_unavailable

from machinery import Config
from machinery.signature import Arg, State, TaskState, new_uuid
from machinery_memcache import MemcacheBackend, MemcacheConnectionError, MemcacheLock

pytestmark = pytest.mark.services  # the test CA comes from scripts/services


@pytest.fixture(scope="module")
def certs() -> Path:
    folder = Path(require_env("REDIS_TLS_CA", "redis-tls")).parent
    for name in ("ca.crt", "server.crt", "server.key"):
        if not (folder / name).exists():
            server_unavailable(f"{folder / name} is missing: scripts/services start (it makes the test CA)")
    return folder


@pytest.fixture(scope="module")
def tls_port(certs: Path) -> Iterator[int]:
    ssl = f"ssl_chain_cert={certs / 'server.crt'},ssl_key={certs / 'server.key'}"
    with own_memcached("-Z", "-o", ssl) as port:
        yield port


def roundtrip(url: str) -> None:
    backend = MemcacheBackend.from_url(url, Config())
    uuid = new_uuid()
    try:
        backend.set_state(TaskState(uuid, State.SUCCESS, "add", results=[Arg(2, "int64")]))
        got = backend.get_state(uuid)
        assert got is not None and got.values == [2]
    finally:
        backend.close()


def test_tls_with_the_ca_verifies_and_works(tls_port: int, certs: Path) -> None:
    roundtrip(f"memcache://127.0.0.1:{tls_port}?tls=true&tls_ca={certs / 'ca.crt'}")
    lock = MemcacheLock.from_url(
        f"memcache://127.0.0.1:{tls_port}?tls=true&tls_ca={certs / 'ca.crt'}", Config()
    )
    key = new_uuid("lock")
    assert lock.acquire(key, 10)
    lock.release(key)
    lock.close()


def test_an_unknown_certificate_is_refused_by_default(tls_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)  # the system store does not know the test CA
    backend = MemcacheBackend.from_url(f"memcache://127.0.0.1:{tls_port}?tls=true", Config())
    with pytest.raises(MemcacheConnectionError) as info:
        backend.get_state(new_uuid())
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    backend.close()


def test_verification_off_only_when_asked(tls_port: int) -> None:
    roundtrip(f"memcache://127.0.0.1:{tls_port}?tls=true&tls_verify=false")


def test_plain_text_to_a_tls_port_fails_clearly(tls_port: int) -> None:
    backend = MemcacheBackend.from_url(
        f"memcache://127.0.0.1:{tls_port}?timeout=1&connect_timeout=1", Config()
    )
    with pytest.raises(MemcacheConnectionError, match=f"127.0.0.1:{tls_port}"):
        backend.get_state(new_uuid())
    backend.close()
