"""Fixtures of the memcache plugin's tests (helpers in memcache_testlib.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from memcache_testlib import cluster_url, node_clients
from pymemcache.client.base import Client  # type: ignore[import-untyped]

from machinery import Config
from machinery_memcache import MemcacheBackend


@pytest.fixture
def url() -> str:
    """The two-server cluster URL of scripts/services."""
    return cluster_url()


@pytest.fixture
def nodes(url: str) -> Iterator[list[Client]]:
    """Plain clients of the cluster's servers, in URL order."""
    clients = node_clients(url)
    yield clients
    for client in clients:
        client.close()


@pytest.fixture
def backend(url: str) -> Iterator[MemcacheBackend]:
    backend = MemcacheBackend.from_url(url, Config())
    yield backend
    backend.close()
