"""Fixtures of the MongoDB plugin's tests (helpers in mongodb_testlib.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from mongodb_testlib import TEST_DB, mongodb_url, server_unavailable
from pymongo import MongoClient
from pymongo.errors import PyMongoError


@pytest.fixture(scope="session")
def raw() -> Iterator[Any]:
    """A plain pymongo handle on the tests' database (to look behind the plugin's back)."""
    url = mongodb_url()
    client: MongoClient[dict[str, Any]] = MongoClient(url, serverSelectionTimeoutMS=3000, tz_aware=True)
    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        server_unavailable(f"MongoDB at {url} does not answer ({exc}): scripts/services start mongodb")
    yield client[TEST_DB]
    client.close()
