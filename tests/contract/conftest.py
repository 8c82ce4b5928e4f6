"""Shared helpers of tests/contract: server variables (a failure in CI, a skip elsewhere), sqlite URLs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parents[2]


def require_env(name: str) -> str:
    """The value of ``name``; without it the test fails in CI (``CI=true``) and is skipped elsewhere."""
    value = os.environ.get(name, "")
    if not value:
        message = (
            f'{name} is not set: start the servers with scripts/services (eval "$(scripts/services env)")'
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return value


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    """A fresh sqlite database file for one test."""
    yield f"sqlite:///{tmp_path / 'contract.db'}"
