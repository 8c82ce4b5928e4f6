"""Helpers of the MongoDB plugin's tests: server URLs from ``scripts/services env`` and a raw client.

The tests use their own database (``MACHINERY_MONGODB_TEST_DB``, default ``machinery_test``) and random
uuids, so they can share the server with other test runs.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from machinery.testing import IN_CI, require_env, server_unavailable

__all__ = [
    "IN_CI",
    "REPO",
    "TEST_DB",
    "mongodb_url",
    "redis_url",
    "require_env",
    "restart_mongodb",
    "server_unavailable",
]

REPO = Path(__file__).resolve().parents[3]
TEST_DB = os.environ.get("MACHINERY_MONGODB_TEST_DB", "machinery_test")


def mongodb_url(query: str = "", database: str = TEST_DB) -> str:
    """``MONGODB_URL`` on the tests' database, with ``query`` appended."""
    base = require_env("MONGODB_URL", "mongodb").rstrip("/")
    return f"{base}/{database}" + (f"?{query}" if query else "")


def redis_url() -> str:
    return require_env("REDIS_URL", "redis")


def restart_mongodb() -> None:
    """Restart scripts/services' MongoDB-wire server (this plugin's tests own it); returns once it
    answers again."""
    subprocess.run([str(REPO / "scripts" / "services"), "restart", "mongodb"], check=True, timeout=60)
