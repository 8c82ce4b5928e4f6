"""The DynamoDB tables of the result backend and the lock: one boto3 client per process, tables checked
(and created when ``create_missing`` allows) on first use, AWS errors as :class:`BackendError` naming the
endpoint (never a secret)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from machinery.config import Config
from machinery.errors import BackendError

from .client import ClientHolder, describe_error, error_code
from .settings import DynamoDBSettings
from .url import AWSTarget

__all__ = ["Tables"]

logger = logging.getLogger("machinery.dynamodb")


class Tables:
    """Some DynamoDB tables, each with a string partition key: ``keys`` maps table name to key name.

    Tables created here are on-demand and have DynamoDB's TTL turned on for the attribute ``TTL``.
    """

    def __init__(
        self, target: AWSTarget, config: Config, settings: DynamoDBSettings, keys: dict[str, str]
    ) -> None:
        self.target = target
        self.settings = settings
        self.keys = dict(keys)
        self.clients = ClientHolder(target, config, settings.client)
        self._ready = False
        self._ready_lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The boto3 DynamoDB client of this process (tables checked on first use)."""
        client = self.clients.get()
        if not self._ready:
            self._ensure_all(client)
        return client

    def request(self, operation: str, **kwargs: Any) -> Any:
        """``client.<operation>(**kwargs)``; a table deleted since it was checked (a reset test server,
        a cleanup job) is checked again, and created when allowed, before one more try."""
        try:
            return getattr(self.client, operation)(**kwargs)
        except Exception as exc:
            if error_code(exc) != "ResourceNotFoundException" or not self.settings.create_missing:
                raise
            self._ready = False
        return getattr(self.client, operation)(**kwargs)

    def call(self, operation: str, table: str, **kwargs: Any) -> Any:
        """:meth:`request`, with any failure as a :class:`BackendError` naming the table and endpoint."""
        try:
            return self.request(operation, **kwargs)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(
                f"DynamoDB {operation} on table {table!r} at {self.target.where} failed: "
                f"{describe_error(exc)}"
            ) from exc

    def conditional(self, operation: str, table: str, what: str, **kwargs: Any) -> bool:
        """A conditional write: True when it was applied, False when its condition did not hold, any
        other failure a :class:`BackendError` naming ``what`` was being done."""
        try:
            self.request(operation, **kwargs)
        except Exception as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise BackendError(
                f"DynamoDB {operation} ({what}) on table {table!r} at {self.target.where} failed: "
                f"{describe_error(exc)}"
            ) from exc
        return True

    def close(self) -> None:
        self.clients.close()

    def _ensure_all(self, client: Any) -> None:
        with self._ready_lock:
            if self._ready:
                return
            for table, key in self.keys.items():
                self._ensure(client, table, key)
            self._ready = True

    def _ensure(self, client: Any, table: str, key: str) -> None:
        try:
            client.describe_table(TableName=table)
            return
        except Exception as exc:
            if error_code(exc) != "ResourceNotFoundException":
                raise BackendError(
                    f"DynamoDB DescribeTable of {table!r} at {self.target.where} failed: "
                    f"{describe_error(exc)}"
                ) from exc
        if not self.settings.create_missing:
            raise BackendError(
                f"DynamoDB table {table!r} does not exist at {self.target.where} and create_missing is off: "
                f"create it (partition key {key}, type S; TTL attribute TTL)"
            )
        self._create(client, table, key)

    def _create(self, client: Any, table: str, key: str) -> None:
        try:
            client.create_table(
                TableName=table,
                KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
            logger.info("created DynamoDB table %s", table)
        except Exception as exc:
            if error_code(exc) != "ResourceInUseException":  # another process created it meanwhile
                raise BackendError(
                    f"DynamoDB CreateTable {table!r} at {self.target.where} failed: {describe_error(exc)}"
                ) from exc
        try:
            client.get_waiter("table_exists").wait(
                TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
            )
            client.update_time_to_live(
                TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "TTL"}
            )
        except Exception as exc:
            if "TimeToLive is already enabled" not in str(exc):
                raise BackendError(
                    f"DynamoDB table {table!r} at {self.target.where} is not ready: {describe_error(exc)}"
                ) from exc
