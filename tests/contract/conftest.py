"""Shared helpers of tests/contract: server variables (a failure in CI, a skip elsewhere), sqlite URLs."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from machinery.testing import IN_CI, require_env  # noqa: F401 - re-exported to the suites

REPO = Path(__file__).resolve().parents[2]


def require_module(module: str, install: str) -> None:
    """Skip the calling test module when ``module`` cannot be imported; in CI (``CI=true``) that is
    an error instead: ``make venv`` installs it. ``install`` says how."""
    if importlib.util.find_spec(module) is None:
        message = f"{module} is not installed: {install}"
        if IN_CI:
            raise RuntimeError(message)
        pytest.skip(message, allow_module_level=True)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    """A fresh sqlite database file for one test."""
    yield f"sqlite:///{tmp_path / 'contract.db'}"
