"""Finding the test servers: skip on a developer machine, fail in CI.

Test suites read server URLs from environment variables (``scripts/services env`` prints them).
A missing one means the server is not running: a developer may not have it, but CI must, so the
test fails there instead of being skipped quietly.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["IN_CI", "require_env", "server_unavailable"]

#: True when running under CI (``CI=true``): a missing server is a failure, never a skip.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_env(name: str, server: str = "") -> str:
    """The value of ``name``; without it, fail in CI and skip elsewhere, saying how to start it."""
    value = os.environ.get(name, "")
    if not value:
        what = f"the {server} server is not running" if server else "its server is not running"
        start = f"scripts/services start {server}" if server else "scripts/services start"
        server_unavailable(f'{name} is not set: {what} ({start}; eval "$(scripts/services env)")')
    return value


def server_unavailable(message: str) -> NoReturn:
    """End the test because a server it needs is missing or does not answer: a failure in CI, a
    skip elsewhere. ``message`` says which server and how to start it."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)
