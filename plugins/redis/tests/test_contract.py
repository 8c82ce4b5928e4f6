"""The contract kit (``machinery.testing``) on every Redis topology of scripts/services, each pairing
once:

- ``redis/redis`` over TCP (priority on) and ``redis+socket/redis+socket`` (priority off);
- ``redis/sqlite`` and ``sqlite/redis``: the broker and the backend each with a foreign partner;
- ``redis-cluster`` (Machinery's comma-list form), ``redis-sentinel`` and ``rediss`` (TLS with client
  certificates).

Every fault test runs on redis/redis, the socket, both mixed pairings and the cluster. A missing server
variable (``REDIS_URL``, ``REDIS_CLUSTER_NODES``...) fails in CI (``CI=true``) and skips elsewhere. The
restart test restarts a server only under ``scripts/services run`` (``MACHINERY_SERVICES`` names it):
the servers of an interactive session are shared.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from redis_testlib import IN_CI, REPO, TEST_DB, require_env, with_db

from machinery import Config
from machinery.testing import (
    FaultContract,
    HostileInputContract,
    TransportContract,
    default_contract_config,
)

pytestmark = pytest.mark.services

#: Short leases so the lease and redelivery checks finish quickly: lease 2 s, heartbeat every 0.5 s.
LEASE = "lease=2&heartbeat=0.5"


def _config() -> Config:
    config = default_contract_config()
    config.redis.connect_timeout = 3
    config.redis.normal_tasks_poll_period = 100
    config.redis.delayed_tasks_poll_period = 50
    return config


def _restart(service: str, **env: str) -> Callable[[], None] | None:
    """A restart of ``service`` when this run started it (scripts/services run), else None."""
    if service not in os.environ.get("MACHINERY_SERVICES", "").split():
        return None  # not ours to restart

    def restart() -> None:
        subprocess.run(
            [str(REPO / "scripts" / "services"), "restart", service],
            check=True,
            timeout=180,
            capture_output=True,
            env={**os.environ, **env},
        )

    return restart


def cluster_nodes() -> str:
    """``h1:p1,h2:p2,...`` of scripts/services' cluster."""
    return require_env("REDIS_CLUSTER_NODES")


class _Redis(TransportContract):
    """One pairing's URLs: ``_url(query)`` builds the broker URL (with ``broker_query``), the backend
    and lock URLs (without). Pairings with a foreign partner override the fixtures."""

    strict_fixtures = IN_CI
    lease_seconds = 2.0
    broker_query = LEASE

    def _url(self, query: str = "") -> str:
        return with_db(require_env("REDIS_URL"), query=query)

    @pytest.fixture
    def broker_url(self) -> str:
        return self._url(self.broker_query)

    @pytest.fixture
    def backend_url(self) -> str:
        return self._url()

    @pytest.fixture
    def lock_url(self) -> str:
        return self._url()

    @pytest.fixture
    def contract_config(self) -> Config:
        return _config()


class _RedisFaults(_Redis, FaultContract):
    """The fault tests on the standalone server (restart, a user that does not exist, no server)."""

    @pytest.fixture
    def restart_server(self) -> Callable[[], None] | None:
        require_env("REDIS_URL")
        return _restart("redis")

    @pytest.fixture
    def bad_credentials_url(self) -> str:
        # the test server has no password, and redis-py ignores a password it does not need: a user
        # that does not exist is refused
        parts = urlsplit(with_db(require_env("REDIS_URL")))
        return f"redis://contract-nobody:wrong-secret-pw-123@{parts.netloc}{parts.path}"

    @pytest.fixture
    def unreachable_url(self) -> str:
        return "redis://:unreachable-secret-456@127.0.0.1:1/0"


class TestRedis(_RedisFaults, HostileInputContract):
    """redis/redis over TCP, the hostile-input contract included (once per broker)."""

    contract_name = "redis/redis"
    broker_query = f"{LEASE}&priority=true"


class TestRedisOverUnixSocket(_RedisFaults):
    contract_name = "redis+socket/redis+socket"

    def _url(self, query: str = "") -> str:
        return f"{require_env('REDIS_SOCKET_URL')}?db={TEST_DB}" + (f"&{query}" if query else "")


class TestRedisBrokerSQLiteBackend(_RedisFaults):
    contract_name = "redis/sqlite"

    @pytest.fixture
    def backend_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'results.db'}"

    @pytest.fixture
    def lock_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'results.db'}"


class TestSQLiteBrokerRedisBackend(_RedisFaults):
    contract_name = "sqlite/redis"

    @pytest.fixture
    def broker_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'queue.db'}"


class TestRedisCluster(_Redis, FaultContract):
    """Machinery's comma-list form: three masters (no replicas); every fault test runs here."""

    contract_name = "redis-cluster/redis-cluster"
    broker_query = f"{LEASE}&priority=true"

    def _url(self, query: str = "") -> str:
        return f"redis://{cluster_nodes()}/0" + (f"?{query}" if query else "")

    @pytest.fixture
    def contract_config(self) -> Config:
        config = _config()
        config.redis.delayed_tasks_poll_period = 100
        return config

    @pytest.fixture
    def restart_server(self) -> Callable[[], None] | None:
        # every node stops and starts again (appendonly, fsync always: the data stays; the slots come
        # back from each node's nodes.conf)
        ports = " ".join(node.rsplit(":", 1)[1] for node in cluster_nodes().split(","))
        return _restart("redis-cluster", REDIS_CLUSTER_PORTS=ports)

    @pytest.fixture
    def bad_credentials_url(self) -> str:
        # the cluster has no password: a user that does not exist is refused by every node
        return f"redis://contract-nobody:wrong-secret-pw-123@{cluster_nodes()}/0"

    @pytest.fixture
    def unreachable_url(self) -> str:
        return "redis://:unreachable-secret-456@127.0.0.1:1,127.0.0.1:2/0"


class TestRedisSentinel(_Redis):
    """``redis+sentinel://sentinel:26379/mymaster/db``: each new connection asks the sentinel for the
    master (the failover test is in test_redis_topologies.py)."""

    contract_name = "redis-sentinel/redis-sentinel"

    def _url(self, query: str = "") -> str:
        parts = urlsplit(require_env("REDIS_SENTINEL_URL"))
        master = parts.path.strip("/").split("/")[0]
        return f"redis+sentinel://{parts.netloc}/{master}/{TEST_DB}" + (f"?{query}" if query else "")

    @pytest.fixture
    def contract_config(self) -> Config:
        config = _config()
        config.redis.delayed_tasks_poll_period = 100
        return config


class TestRedisTLS(_Redis):
    """``rediss://`` with the CA, client certificate and key as URL parameters (the server requires a
    client certificate); Config.tls is tested in test_redis_topologies.py."""

    contract_name = "rediss/rediss"

    def _url(self, query: str = "") -> str:
        parts = urlsplit(require_env("REDISS_URL"))
        files = "&".join(
            f"{name}={quote(require_env(var), safe='/')}"
            for name, var in (
                ("ssl_ca_certs", "REDIS_TLS_CA"),
                ("ssl_certfile", "REDIS_TLS_CERT"),
                ("ssl_keyfile", "REDIS_TLS_KEY"),
            )
        )
        return f"rediss://{parts.netloc}/{TEST_DB}?{files}" + (f"&{query}" if query else "")

    @pytest.fixture
    def contract_config(self) -> Config:
        config = _config()
        config.redis.delayed_tasks_poll_period = 100
        return config
