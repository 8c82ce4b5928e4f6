"""Entry point (group ``machinery``): the hooks that make SQS and DynamoDB URLs build this package."""

from __future__ import annotations

from typing import TYPE_CHECKING

from machinery.plugins import SchemeRow, hookimpl

from .url import is_dynamodb_url, is_sqs_url

if TYPE_CHECKING:
    from machinery.backend import Backend
    from machinery.broker import Broker
    from machinery.config import Config
    from machinery.settings import Section

DISTRIBUTION = "machinery-sqs"


@hookimpl
def machinery_schemes() -> list[SchemeRow]:
    return [
        SchemeRow("sqs", "broker", DISTRIBUTION),
        SchemeRow("https://sqs", "broker", DISTRIBUTION),
        SchemeRow("dynamodb", "backend", DISTRIBUTION),
        SchemeRow("https://dynamodb", "backend", DISTRIBUTION),
    ]


@hookimpl
def machinery_settings() -> list[type[Section]]:
    from .settings import DynamoDBSettings, SQSSettings  # imports nothing from boto3

    return [SQSSettings, DynamoDBSettings]


@hookimpl
def machinery_broker(url: str, config: Config) -> Broker | None:
    if not is_sqs_url(url):
        return None
    from .broker import SQSBroker

    return SQSBroker.from_url(url, config)


@hookimpl
def machinery_backend(url: str, config: Config) -> Backend | None:
    if not is_dynamodb_url(url):
        return None
    from .backend import DynamoDBBackend

    return DynamoDBBackend.from_url(url, config)
