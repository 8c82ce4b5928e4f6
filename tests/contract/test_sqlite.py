"""The contract kit against the built-in sqlite:// (everything: worker processes and faults too)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from machinery.testing import (
    EventsStoreContract,
    FaultContract,
    HostileInputContract,
    NotApplicable,
    TransportContract,
    not_applicable,
)

from .conftest import IN_CI


class TestSQLite(TransportContract, EventsStoreContract, FaultContract, HostileInputContract):
    contract_name = "sqlite/sqlite"
    strict_fixtures = IN_CI

    @pytest.fixture
    def broker_url(self, sqlite_url: str) -> str:
        return sqlite_url

    @pytest.fixture
    def backend_url(self, sqlite_url: str) -> str:
        return sqlite_url

    @pytest.fixture
    def lock_url(self, sqlite_url: str) -> str:
        return sqlite_url

    @pytest.fixture
    def restart_server(self, sqlite_url: str) -> Callable[[], None]:
        """No server to restart: the file is locked exclusively for 2 s (every writer must wait)."""
        path = sqlite_url.removeprefix("sqlite:///")

        def outage() -> None:
            conn = sqlite3.connect(path, timeout=30, isolation_level=None)
            try:
                conn.execute("BEGIN EXCLUSIVE")
                threading.Event().wait(2.0)
                conn.execute("ROLLBACK")
            finally:
                conn.close()

        return outage

    @pytest.fixture
    def bad_credentials_url(self) -> NotApplicable:
        return not_applicable("a sqlite file has no credentials")

    @pytest.fixture
    def unreachable_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'missing-dir' / 'sub' / 'x.db'}"
