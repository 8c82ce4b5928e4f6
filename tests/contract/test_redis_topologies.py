"""The contract kit against plugins/redis on the other topologies of scripts/services (issue 8):
Redis Cluster (every fault test too), Sentinel and TLS (rediss://). The unix socket runs in
plugins/redis/tests/test_redis_contract.py, redis/redis over TCP in test_redis.py.

Skipped as a whole when plugins/redis is not in the tree. A missing server variable (REDIS_CLUSTER_URL,
REDIS_SENTINEL_URL, REDISS_URL...) fails in CI (CI=true) and skips elsewhere.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from urllib.parse import quote, urlsplit

import pytest

from machinery import Config
from machinery.testing import FaultContract, TransportContract, default_contract_config

from .conftest import IN_CI, REPO, require_env, require_module

if not (REPO / "plugins" / "redis" / "pyproject.toml").exists():
    pytest.skip("plugins/redis is not in this tree", allow_module_level=True)
require_module("machinery_redis", "make venv (pip install -e plugins/redis)")

pytestmark = pytest.mark.services

#: lease/heartbeat short enough for the redelivery and SIGKILL tests
LEASE = "lease=2&heartbeat=0.5"
#: the database of these tests on the single-server topologies (a cluster has only database 0)
TEST_DB = int(os.environ.get("MACHINERY_REDIS_TEST_DB", "7"))


def _config() -> Config:
    config = default_contract_config()
    config.redis.connect_timeout = 3
    config.redis.normal_tasks_poll_period = 100
    config.redis.delayed_tasks_poll_period = 100
    return config


def cluster_nodes() -> str:
    """``h1:p1,h2:p2,...`` of scripts/services' cluster."""
    return require_env("REDIS_CLUSTER_NODES")


class _Topology(TransportContract):
    """One topology's URLs: ``_url(query)`` for the broker (with ``broker_query``), backend and lock."""

    strict_fixtures = IN_CI
    lease_seconds = 2.0
    broker_query = LEASE

    def _url(self, query: str = "") -> str:
        raise NotImplementedError

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


class TestRedisCluster(_Topology, FaultContract):
    """Machinery's comma-list form: three masters (no replicas); every fault test runs here."""

    contract_name = "redis-cluster/redis-cluster"
    broker_query = f"{LEASE}&priority=true"

    def _url(self, query: str = "") -> str:
        return f"redis://{cluster_nodes()}/0" + (f"?{query}" if query else "")

    @pytest.fixture
    def restart_server(self) -> Callable[[], None] | None:
        if "redis-cluster" not in os.environ.get("MACHINERY_SERVICES", "").split():
            return None  # not ours to restart
        ports = " ".join(node.rsplit(":", 1)[1] for node in cluster_nodes().split(","))

        def restart() -> None:
            # every node stops and starts again (appendonly, fsync always: the data stays; the slots
            # come back from each node's nodes.conf)
            subprocess.run(
                [str(REPO / "scripts" / "services"), "restart", "redis-cluster"],
                check=True,
                timeout=180,
                capture_output=True,
                env={**os.environ, "REDIS_CLUSTER_PORTS": ports},
            )

        return restart

    @pytest.fixture
    def bad_credentials_url(self) -> str:
        # the cluster has no password: a user that does not exist is refused by every node
        return f"redis://contract-nobody:wrong-secret-pw-123@{cluster_nodes()}/0"

    @pytest.fixture
    def unreachable_url(self) -> str:
        return "redis://:unreachable-secret-456@127.0.0.1:1,127.0.0.1:2/0"


class TestRedisSentinel(_Topology):
    """``redis+sentinel://sentinel:26379/mymaster/db``: each new connection asks the sentinel for the
    master (the failover test is in plugins/redis/tests/test_redis_topologies.py)."""

    contract_name = "redis-sentinel/redis-sentinel"

    def _url(self, query: str = "") -> str:
        parts = urlsplit(require_env("REDIS_SENTINEL_URL"))
        master = parts.path.strip("/").split("/")[0]
        return f"redis+sentinel://{parts.netloc}/{master}/{TEST_DB}" + (f"?{query}" if query else "")


class TestRedisTLS(_Topology):
    """``rediss://`` with the CA, client certificate and key as URL parameters (the server requires a
    client certificate); Config.tls is tested in plugins/redis/tests/test_redis_topologies.py."""

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
