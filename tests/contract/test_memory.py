"""The contract kit against the built-in memory:// (one process: no worker processes, no faults)."""

from __future__ import annotations

import uuid

import pytest

from machinery.testing import (
    BackendContract,
    BrokerContract,
    EventsStoreContract,
    HostileInputContract,
    LockContract,
    WorkerContract,
)

from .conftest import IN_CI


class TestMemory(
    BrokerContract, BackendContract, EventsStoreContract, LockContract, WorkerContract, HostileInputContract
):
    contract_name = "memory/memory"
    strict_fixtures = IN_CI

    @pytest.fixture
    def broker_url(self) -> str:
        return f"memory://{uuid.uuid4().hex}"

    @pytest.fixture
    def backend_url(self, broker_url: str) -> str:
        return broker_url

    @pytest.fixture
    def lock_url(self, broker_url: str) -> str:
        return broker_url
