"""The shared contract kit (``machinery.testing``) on amqp/amqp and amqp/sqlite.

Each test gets its own exchange and binding key (``contract_config``); the kit picks fresh queue names.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from amqp_testlib import SERVICES, amqp_url_or_skip

from machinery import Config

testing = pytest.importorskip("machinery.testing")
if not hasattr(testing, "HostileInputContract"):
    pytest.skip("machinery.testing has no contract classes yet", allow_module_level=True)

from machinery.testing import (  # noqa: E402
    IN_CI,
    BackendContract,
    BrokerContract,
    FaultContract,
    HostileInputContract,
    WorkerContract,
    default_contract_config,
    require_env,
)

pytestmark = pytest.mark.services


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username or 'guest'}:{password}@{parts.hostname}:{parts.port or 5672}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


class _AMQPFixtures:
    strict_fixtures = IN_CI

    @pytest.fixture
    def broker_url(self) -> str:
        return amqp_url_or_skip()

    @pytest.fixture
    def contract_config(self) -> Config:
        config = default_contract_config()
        suffix = uuid.uuid4().hex[:10]
        config.amqp.exchange = f"cx_{suffix}"
        config.amqp.binding_key = f"ck_{suffix}"
        config.amqp.prefetch_count = 0
        config.amqp.queue_declare_args = {"x-max-priority": 10}
        config.results_expire_in = 300
        return config

    @pytest.fixture
    def restart_server(self) -> Callable[[], None] | None:
        if "rabbitmq" not in os.environ.get("MACHINERY_SERVICES", "").split():
            return None

        def restart() -> None:
            subprocess.run(
                [str(SERVICES), "restart", "rabbitmq"], check=True, timeout=180, capture_output=True
            )

        return restart

    @pytest.fixture
    def bad_credentials_url(self) -> str:
        return _with_password(amqp_url_or_skip(), "wrong-password-123")

    @pytest.fixture
    def unreachable_url(self) -> str:
        return "amqp://guest:secret-pw-456@127.0.0.1:1/"


class TestAMQPWithAMQPBackend(
    _AMQPFixtures, BrokerContract, BackendContract, WorkerContract, FaultContract, HostileInputContract
):
    contract_name = "amqp/amqp"
    # The waiter is woken by RabbitMQ routing the write (no polling), but a write to a new uuid first
    # declares and binds a durable queue: two Mnesia transactions, 4-10 ms on a busy 2-core machine.
    # The kit's default bound (a quarter of BaseBackend.poll_interval, 12.5 ms) is tighter than that.
    push_wait_bound = 0.05

    @pytest.fixture
    def backend_url(self) -> str:
        return amqp_url_or_skip()


class TestAMQPWithSQLiteBackend(_AMQPFixtures, WorkerContract):
    contract_name = "amqp/sqlite"

    @pytest.fixture
    def backend_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'results.db'}"


def _redis_url() -> str:
    return require_env("REDIS_URL", "redis")


class TestAMQPWithRedisBackend(_AMQPFixtures, WorkerContract):
    """amqp/redis, when machinery-redis is installed."""

    contract_name = "amqp/redis"

    @pytest.fixture
    def backend_url(self) -> str:
        pytest.importorskip("machinery_redis", reason="machinery-redis is not installed")
        return _redis_url()
