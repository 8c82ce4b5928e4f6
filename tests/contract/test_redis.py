"""The contract kit against plugins/redis (redis/redis, faults included) on scripts/services' Redis.

Skipped as a whole when plugins/redis is not in the tree. With the plugin present, a missing
REDIS_URL or an uninstalled machinery_redis fails in CI (CI=true) and skips elsewhere.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from machinery import Config
from machinery.testing import (
    FaultContract,
    HostileInputContract,
    TransportContract,
    default_contract_config,
)

from .conftest import IN_CI, REPO, require_env, require_module

if not (REPO / "plugins" / "redis" / "pyproject.toml").exists():
    pytest.skip("plugins/redis is not in this tree", allow_module_level=True)
require_module("machinery_redis", "make venv (pip install -e plugins/redis)")

pytestmark = pytest.mark.services

#: lease/heartbeat short enough for the redelivery and SIGKILL tests
BROKER_OPTIONS = "lease=2&heartbeat=0.5&priority=true"


def with_options(url: str, options: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{options}"


def with_password(url: str, password: str, user: str = "") -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{user}:{password}@{parts.hostname}:{parts.port or 6379}{parts.path}"


class TestRedis(TransportContract, FaultContract, HostileInputContract):
    contract_name = "redis/redis"
    strict_fixtures = IN_CI
    lease_seconds = 2.0

    @pytest.fixture
    def broker_url(self) -> str:
        return with_options(require_env("REDIS_URL"), BROKER_OPTIONS)

    @pytest.fixture
    def backend_url(self) -> str:
        return require_env("REDIS_URL")

    @pytest.fixture
    def lock_url(self) -> str:
        return require_env("REDIS_URL")

    @pytest.fixture
    def contract_config(self) -> Config:
        config = default_contract_config()
        config.redis.connect_timeout = 3
        config.redis.normal_tasks_poll_period = 100
        config.redis.delayed_tasks_poll_period = 50
        return config

    @pytest.fixture
    def restart_server(self) -> Callable[[], None] | None:
        if "redis" not in os.environ.get("MACHINERY_SERVICES", "").split():
            return None  # not ours to restart

        def restart() -> None:
            subprocess.run(
                [str(REPO / "scripts" / "services"), "restart", "redis"],
                check=True,
                timeout=120,
                capture_output=True,
            )

        return restart

    @pytest.fixture
    def bad_credentials_url(self) -> str:
        # the test server has no password, and redis-py ignores a password it does not need: a user
        # that does not exist is refused
        return with_password(require_env("REDIS_URL"), "wrong-secret-pw-123", user="contract-nobody")

    @pytest.fixture
    def unreachable_url(self) -> str:
        return "redis://:unreachable-secret-456@127.0.0.1:1/0"
