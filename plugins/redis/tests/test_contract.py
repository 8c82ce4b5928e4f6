"""The contract kit (``machinery.testing``) against the Redis broker, backend and lock."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from machinery import Config
from machinery.testing import FaultContract, TransportContract, default_contract_config

from .conftest import IN_CI, require_env, restart_redis, with_db

#: Short leases so the redelivery tests finish quickly: lease 2 s, heartbeat every 0.5 s.
LEASE = "lease=2&heartbeat=0.5"


class TestRedisContract(TransportContract, FaultContract):
    contract_name = "redis/redis"
    strict_fixtures = IN_CI
    lease_seconds = 2.0

    @pytest.fixture
    def broker_url(self) -> str:
        return with_db(require_env("REDIS_URL"), query=LEASE)

    @pytest.fixture
    def backend_url(self) -> str:
        return with_db(require_env("REDIS_URL"))

    @pytest.fixture
    def lock_url(self) -> str:
        return with_db(require_env("REDIS_URL"))

    @pytest.fixture
    def contract_config(self) -> Config:
        config = default_contract_config()
        config.redis.delayed_tasks_poll_period = 100
        return config

    @pytest.fixture
    def restart_server(self) -> Callable[[], None]:
        require_env("REDIS_URL")
        return restart_redis

    @pytest.fixture
    def bad_credentials_url(self) -> str:
        url = with_db(require_env("REDIS_URL"))
        return url.replace("redis://", "redis://machinery:wrong-s3cret-pw@", 1)

    @pytest.fixture
    def unreachable_url(self) -> str:
        return "redis://:s3cret-pw@127.0.0.1:1/0"


class TestRedisPriorityContract(TransportContract):
    """The same with priority on (``?priority=true``): the priority tests run, everything else still
    passes (priority 0 keeps using the plain Go-compatible list)."""

    contract_name = "redis/redis priority"
    strict_fixtures = IN_CI
    lease_seconds = 2.0

    @pytest.fixture
    def broker_url(self) -> str:
        return with_db(require_env("REDIS_URL"), query=LEASE + "&priority=true")

    @pytest.fixture
    def backend_url(self) -> str:
        return with_db(require_env("REDIS_URL"))

    @pytest.fixture
    def lock_url(self) -> str:
        return with_db(require_env("REDIS_URL"))

    @pytest.fixture
    def contract_config(self) -> Config:
        config = default_contract_config()
        config.redis.delayed_tasks_poll_period = 100
        return config
