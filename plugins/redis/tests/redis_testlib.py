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

from machinery.testing import IN_CI, require_env, server_unavailable

__all__ = ["IN_CI", "REPO", "TEST_DB", "require_env", "restart_redis", "server_unavailable", "with_db"]

REPO = Path(__file__).resolve().parents[3]
TEST_DB = int(os.environ.get("MACHINERY_REDIS_TEST_DB", "7"))


def with_db(url: str, db: int = TEST_DB, query: str = "") -> str:
    """``url`` pointed at database ``db`` (and ``query`` appended)."""
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}/{db}"
    return base + (f"?{query}" if query else "")


def restart_redis() -> None:
    """``scripts/services restart redis`` (the data survives: appendonly + fsync always)."""
    subprocess.run([str(REPO / "scripts" / "services"), "restart", "redis"], check=True, capture_output=True)
