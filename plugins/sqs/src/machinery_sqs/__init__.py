"""Machinery for Python: the Amazon SQS broker, the DynamoDB result backend and the DynamoDB lock.

``pip install machinery-sqs``.

``https://sqs.<region>.amazonaws.com/<account-id>``, ``sqs://`` and ``dynamodb://`` URLs select them through
the ``machinery`` entry point; see README.md for the URL forms, settings, IAM permissions and guarantees.
"""

from __future__ import annotations

from .backend import DynamoDBBackend
from .broker import DeadLetter, MessageTooLargeError, SQSBroker, SQSDelivery
from .lock import DynamoDBLock
from .settings import DynamoDBSettings, SQSSettings
from .url import AWSTarget, parse_backend_url, parse_broker_url

__all__ = [
    "AWSTarget",
    "DeadLetter",
    "DynamoDBBackend",
    "DynamoDBLock",
    "DynamoDBSettings",
    "MessageTooLargeError",
    "SQSBroker",
    "SQSDelivery",
    "SQSSettings",
    "parse_backend_url",
    "parse_broker_url",
]
__version__ = "0.1.0"
