"""Helpers for the Redis plugin's tests: the server of ``scripts/services`` (``REDIS_URL``).

Without ``REDIS_URL`` the integration tests are skipped on a developer machine and fail in CI
(``CI=true``). They use their own database (``MACHINERY_REDIS_TEST_DB``, default 7) and random key
names, so they can share the server with other test runs.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parents[3]
TEST_DB = int(os.environ.get("MACHINERY_REDIS_TEST_DB", "7"))


def require_env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        message = (
            f'{name} is not set: start the servers with scripts/services (eval "$(scripts/services env)")'
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return value


def with_db(url: str, db: int = TEST_DB, query: str = "") -> str:
    """``url`` pointed at database ``db`` (and ``query`` appended)."""
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}/{db}"
    return base + (f"?{query}" if query else "")


def restart_redis() -> None:
    """``scripts/services restart redis`` (the data survives: appendonly + fsync always)."""
    subprocess.run([str(REPO / "scripts" / "services"), "restart", "redis"], check=True, capture_output=True)
