"""Fixtures of the SQS/DynamoDB plugin's tests: the moto server from ``scripts/services`` (a failure in CI,
a skip elsewhere when it is not running)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from machinery import Config
from machinery.testing import require_env, server_unavailable
from machinery_sqs import DynamoDBBackend, SQSBroker

#: visibility timeout of the tests' queues: short, so redelivery tests finish quickly
VISIBILITY = 3


def sqs_url() -> str:
    return require_env("SQS_BROKER_URL", "aws")


def dynamodb_url() -> str:
    require_env("AWS_ENDPOINT_URL_DYNAMODB", "aws")
    return "dynamodb://"


def fast_config() -> Config:
    config = Config()
    config.sqs.visibility_timeout = VISIBILITY
    config.sqs.wait_time_seconds = 20
    return config


@pytest.fixture
def name() -> str:
    """A queue name no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def config() -> Config:
    return fast_config()


@pytest.fixture
def broker(config: Config) -> Iterator[SQSBroker]:
    broker = SQSBroker.from_url(sqs_url(), config)
    try:
        broker.client.list_queues(MaxResults=1)
    except Exception as exc:
        server_unavailable(f"moto (SQS) at {sqs_url()} does not answer ({exc}): scripts/services start aws")
    yield broker
    broker.close()


@pytest.fixture
def backend(config: Config) -> Iterator[DynamoDBBackend]:
    backend = DynamoDBBackend.from_url(dynamodb_url(), config)
    yield backend
    backend.close()
