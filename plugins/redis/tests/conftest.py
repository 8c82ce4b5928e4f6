"""Fixtures of the Redis plugin's tests (helpers in redis_testlib.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from redis_testlib import require_env, server_unavailable, with_db


@pytest.fixture(scope="session")
def redis_url() -> str:
    """``REDIS_URL`` on the tests' own database."""
    return with_db(require_env("REDIS_URL"))


@pytest.fixture(scope="session")
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        client.ping()
    except redis.RedisError as exc:
        server_unavailable(f"Redis at {redis_url} does not answer ({exc}): scripts/services start redis")
    yield client
    client.close()


@pytest.fixture
def name() -> str:
    """A unique name for a test's queues and keys."""
    return f"t{uuid.uuid4().hex[:10]}"
