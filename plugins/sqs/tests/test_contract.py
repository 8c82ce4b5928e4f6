"""The contract kit (``machinery.testing``) on moto: sqs/dynamodb runs every contract (faults included);
the mixed pairs sqs/sqlite and redis/dynamodb run the worker scenarios only, with workers in threads: the
broker and backend contracts of each side, and the worker processes, already ran on sqs/dynamodb (this
saves about a minute of CI time)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqs_testlib import VISIBILITY, dynamodb_url, fast_config, sqs_url

from machinery import Config
from machinery.testing import (
    IN_CI,
    BackendContract,
    BrokerContract,
    FaultContract,
    HostileInputContract,
    LockContract,
    NotApplicable,
    WorkerContract,
    default_contract_config,
    not_applicable,
    require_env,
)

pytestmark = pytest.mark.services


def contract_config() -> Config:
    config = default_contract_config()
    fast = fast_config()
    config.sqs.visibility_timeout = fast.sqs.visibility_timeout
    return config


class _SQSCombination:
    strict_fixtures = IN_CI
    lease_seconds = float(VISIBILITY)
    #: the ETA rounds up to whole seconds (SQS's DelaySeconds): at most 1 s late, plus a receive
    eta_late_allowance = 1.5

    @pytest.fixture
    def contract_config(self) -> Config:
        return contract_config()


class TestSQSDynamoDB(
    _SQSCombination,
    BrokerContract,
    BackendContract,
    LockContract,
    WorkerContract,
    FaultContract,
    HostileInputContract,
):
    contract_name = "sqs/dynamodb"
    #: moto answers one request at a time per connection: a smaller race keeps the run short
    chord_groups = 50

    @pytest.fixture
    def broker_url(self) -> str:
        return sqs_url()

    @pytest.fixture
    def backend_url(self) -> str:
        return dynamodb_url()

    @pytest.fixture
    def lock_url(self) -> str:
        return dynamodb_url()

    @pytest.fixture
    def restart_server(self) -> NotApplicable:
        return not_applicable("moto keeps queues and tables in memory: a restart loses them (AWS has none)")

    @pytest.fixture
    def bad_credentials_url(self) -> NotApplicable:
        return not_applicable("moto accepts any credentials (they come from boto3's configuration)")

    @pytest.fixture
    def unreachable_url(self) -> str:
        return "http://127.0.0.1:1/123456789012"


class _ThreadWorkersOnly:
    @pytest.fixture
    def worker_mode(self) -> str:
        return "thread"


class TestSQSWithSQLite(_ThreadWorkersOnly, _SQSCombination, WorkerContract):
    contract_name = "sqs/sqlite"

    @pytest.fixture
    def broker_url(self) -> str:
        return sqs_url()

    @pytest.fixture
    def backend_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'results.db'}"


class TestRedisWithDynamoDB(_ThreadWorkersOnly, WorkerContract):
    contract_name = "redis/dynamodb"
    strict_fixtures = IN_CI

    @pytest.fixture
    def broker_url(self) -> str:
        pytest.importorskip("machinery_redis")
        parts = urlsplit(require_env("REDIS_URL", "redis"))
        # the Redis plugin's tests' database (MACHINERY_REDIS_TEST_DB), short leases as in its own contract
        db = os.environ.get("MACHINERY_REDIS_TEST_DB", "7")
        return f"{parts.scheme}://{parts.netloc}/{db}?lease=2&heartbeat=0.5"

    @pytest.fixture
    def backend_url(self) -> str:
        return dynamodb_url()
