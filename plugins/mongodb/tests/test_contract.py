"""The contract kit (``machinery.testing``) on scripts/services' MongoDB-wire server (SecantusDB).

One combination, redis broker + mongodb results and lock: the backend and lock contracts, every
worker scenario (threads and processes), and the fault tests (SIGKILL of a worker, a restart of the
MongoDB server mid-run, wrong credentials, an unreachable server). The backend and lock contracts do
not depend on the broker, so they are not repeated for amqp/mongodb or sqlite/mongodb.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from mongodb_testlib import IN_CI, mongodb_url, redis_url, restart_mongodb

from machinery import Config
from machinery.testing import (
    BackendContract,
    FaultContract,
    LockContract,
    WorkerContract,
    default_contract_config,
)

pytestmark = pytest.mark.services


class TestRedisBrokerMongoBackend(BackendContract, LockContract, WorkerContract, FaultContract):
    contract_name = "redis/mongodb"
    strict_fixtures = IN_CI
    lease_seconds = 2.0

    @pytest.fixture
    def contract_config(self) -> Config:
        config = default_contract_config()
        config.redis.delayed_tasks_poll_period = 100
        config.redis.connect_timeout = 3
        return config

    @pytest.fixture
    def broker_url(self) -> str:
        return f"{redis_url()}?lease=2&heartbeat=0.5"

    @pytest.fixture
    def backend_url(self) -> str:
        return mongodb_url()

    @pytest.fixture
    def lock_url(self) -> str:
        return mongodb_url()

    @pytest.fixture
    def restart_server(self) -> Callable[[], None]:
        mongodb_url()  # skip (or fail in CI) when the server is not running
        return restart_mongodb

    @pytest.fixture
    def bad_credentials_url(self) -> str:
        # SecantusDB runs without required auth but checks any credentials a client sends
        return mongodb_url("authSource=admin").replace("mongodb://", "mongodb://nobody:wrong-s3cret-pw@", 1)

    @pytest.fixture
    def unreachable_url(self) -> str:
        return "mongodb://machinery:s3cret-pw@127.0.0.1:1/machinery_test?serverSelectionTimeoutMS=3000"
