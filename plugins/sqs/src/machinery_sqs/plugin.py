"""Entry point (group ``machinery``): SQS URLs build this package's broker and DynamoDB URLs its result
backend and lock; the classes are imported on first use (``transport()``).

SQS's URLs are ``https://`` ones told apart by their host (``sqs.<region>.amazonaws.com``) or their
account-id path, so each kind gets a matcher from :mod:`machinery_sqs.url` (no I/O, no boto3) rather
than a scheme alone; the schemes are what ``machinery plugins`` lists.
"""

from __future__ import annotations

from machinery.plugins import transport

from .url import is_dynamodb_url, is_sqs_url

__all__ = ["backend", "broker"]

broker = transport(
    ["sqs", "https://sqs"],
    broker="machinery_sqs.broker:SQSBroker",
    settings="machinery_sqs.settings:SQSSettings",
    matches=is_sqs_url,
)
backend = transport(
    ["dynamodb", "https://dynamodb"],
    backend="machinery_sqs.backend:DynamoDBBackend",
    lock="machinery_sqs.lock:DynamoDBLock",
    settings="machinery_sqs.settings:DynamoDBSettings",
    matches=is_dynamodb_url,
)
