"""Helpers of the SQS/DynamoDB plugin's tests: the moto server from ``scripts/services`` (a failure in CI,
a skip elsewhere when it is not running)."""

from __future__ import annotations

from machinery import Config
from machinery.testing import require_env

__all__ = ["VISIBILITY", "dynamodb_url", "fast_config", "sqs_url"]

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
