"""The contract kit on the Pub/Sub emulator: gcppubsub/sqlite (broker, workers, faults, hostile input)
and gcppubsub/redis (workers). Each test has a subscription and a default queue of its own."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from gcppubsub_testlib import pubsub_url_for

from machinery import Config
from machinery.testing import (
    IN_CI,
    BrokerContract,
    FaultContract,
    HostileInputContract,
    NotApplicable,
    WorkerContract,
    default_contract_config,
    not_applicable,
    require_env,
)

pytestmark = pytest.mark.services


class _PubSubFixtures:
    strict_fixtures = IN_CI
    lease_seconds = 2.0

    @pytest.fixture
    def broker_url(self) -> str:
        return pubsub_url_for(f"sub-{uuid.uuid4().hex[:12]}")

    @pytest.fixture
    def contract_config(self) -> Config:
        config = default_contract_config()
        config.default_queue = f"tasks-{uuid.uuid4().hex[:12]}"
        return config


class TestPubSubWithSQLite(
    _PubSubFixtures, BrokerContract, WorkerContract, FaultContract, HostileInputContract
):
    contract_name = "gcppubsub/sqlite"

    @pytest.fixture
    def backend_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'results.db'}"

    @pytest.fixture
    def restart_server(self) -> NotApplicable:
        return not_applicable("the emulator keeps messages in memory; Pub/Sub itself is never restarted")

    @pytest.fixture
    def bad_credentials_url(self) -> NotApplicable:
        return not_applicable("a gcppubsub:// URL carries no credentials (test_pubsub_broker checks errors)")

    @pytest.fixture
    def unreachable_url(self) -> NotApplicable:
        return not_applicable("the endpoint is not in the URL (test_pubsub_broker checks an unreachable one)")


class TestPubSubWithRedis(_PubSubFixtures, WorkerContract):
    contract_name = "gcppubsub/redis"

    @pytest.fixture
    def backend_url(self) -> str:
        return require_env("REDIS_URL", "redis")
