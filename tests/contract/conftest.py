"""Shared helpers of tests/contract: server variables (a failure in CI, a skip elsewhere), sqlite URLs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from machinery.testing import IN_CI, require_env  # noqa: F401 - re-exported to the suites

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    """A fresh sqlite database file for one test."""
    yield f"sqlite:///{tmp_path / 'contract.db'}"
