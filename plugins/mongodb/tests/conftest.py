"""Fixtures of the MongoDB plugin's tests (helpers in mongodb_testlib.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from mongodb_testlib import TEST_DB, mongodb_url, server_unavailable, spawn_server
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


@pytest.fixture(scope="session")
def replica_set_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A one-member replica set of the tests' own (change streams need a replica set)."""
    with spawn_server(tmp_path_factory.mktemp("mongodb-rs"), replica_set="rs0") as port:
        yield port


@pytest.fixture(scope="session")
def tls_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A standalone server of the tests' own that speaks only TLS (scripts/services' test CA)."""
    with spawn_server(tmp_path_factory.mktemp("mongodb-tls"), tls=True) as port:
        yield port
