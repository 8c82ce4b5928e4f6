"""The other URL forms against scripts/services: rediss:// (TLS) and Sentinel. Cluster is refused for now.

(The unix socket runs the whole contract kit in test_redis_contract.py.)
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import pytest
from redis_testlib import TEST_DB, require_env

from machinery import Config, Machinery
from machinery.errors import BrokerError

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
