"""Fixtures of the SQS/DynamoDB plugin's tests (helpers that tests import live in sqs_testlib.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqs_testlib import dynamodb_url, fast_config, sqs_url

from machinery import Config
from machinery.testing import server_unavailable
from machinery_sqs import DynamoDBBackend, SQSBroker


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
