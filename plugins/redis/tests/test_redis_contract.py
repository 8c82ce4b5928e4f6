"""The contract kit (``machinery.testing``) from the plugin's own folder.

``tests/contract/test_redis.py`` runs redis/redis over TCP (priority on); here: the unix-socket URL
form with priority off, and the mixed combinations redis/sqlite and sqlite/redis, every fault test
included.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from redis_testlib import IN_CI, TEST_DB, require_env, restart_redis, with_db

from machinery import Config
from machinery.testing import FaultContract, TransportContract, default_contract_config

pytestmark = pytest.mark.services

#: Short leases so the redelivery tests finish quickly: lease 2 s, heartbeat every 0.5 s.
LEASE = "lease=2&heartbeat=0.5"


def socket_url(query: str = "") -> str:
    return f"{require_env('REDIS_SOCKET_URL')}?db={TEST_DB}" + (f"&{query}" if query else "")


class _RedisFaults(TransportContract, FaultContract):
    strict_fixtures = IN_CI
    lease_seconds = 2.0

    @pytest.fixture
    def contract_config(self) -> Config:
        config = default_contract_config()
        config.redis.delayed_tasks_poll_period = 100
        config.redis.connect_timeout = 3
        return config

    @pytest.fixture
    def restart_server(self) -> Callable[[], None]:
        require_env("REDIS_URL")
        return restart_redis

    @pytest.fixture
    def bad_credentials_url(self) -> str:
        # the test server has no password: a user that does not exist is refused
        return with_db(require_env("REDIS_URL")).replace("redis://", "redis://nobody:wrong-s3cret-pw@", 1)

    @pytest.fixture
    def unreachable_url(self) -> str:
        return "redis://:s3cret-pw@127.0.0.1:1/0"


class TestRedisOverUnixSocket(_RedisFaults):
    contract_name = "redis+socket/redis+socket"

    @pytest.fixture
    def broker_url(self) -> str:
        return socket_url(LEASE)

    @pytest.fixture
    def backend_url(self) -> str:
        return socket_url()

    @pytest.fixture
    def lock_url(self) -> str:
        return socket_url()


class TestRedisBrokerSQLiteBackend(_RedisFaults):
    contract_name = "redis/sqlite"

    @pytest.fixture
    def broker_url(self) -> str:
        return with_db(require_env("REDIS_URL"), query=LEASE)

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

    @pytest.fixture
    def backend_url(self) -> str:
        return with_db(require_env("REDIS_URL"))

    @pytest.fixture
    def lock_url(self) -> str:
        return with_db(require_env("REDIS_URL"))
