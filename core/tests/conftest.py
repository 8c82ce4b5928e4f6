"""Shared fixtures for the core's unit tests: an isolated in-memory app per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from machinery import Config, Machinery


@pytest.fixture
def memory_url() -> str:
    """A memory:// URL private to one test (memory stores are shared by name)."""
    return f"memory://{uuid.uuid4().hex}"


@pytest.fixture
def app(memory_url: str) -> Iterator[Machinery]:
    config = Config(broker=memory_url, result_backend=memory_url)
    config.worker.shutdown_grace = 5.0
    config.worker.poll_timeout = 0.1  # workers stop within 0.1 s: faster teardowns
    application = Machinery(config)
    yield application
    application.close()
