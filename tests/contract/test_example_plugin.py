"""The example plugin of the "Write a plugin" guide: installed, found by its URL scheme, passing the kit."""

from __future__ import annotations

import uuid

import pytest

from machinery import Config, Machinery, plugins
from machinery.testing import BackendContract, BrokerContract, LockContract, WorkerContract

from .conftest import IN_CI, require_module

require_module("machinery_example", "pip install -e tests/contract/example_plugin (make venv does)")


def test_found_by_its_url_scheme() -> None:
    from machinery_example import ExampleBackend, ExampleBroker, ExampleLock

    app = Machinery(
        Config(broker="example://found", result_backend="example://found", lock="example://found")
    )
    assert isinstance(app.broker, ExampleBroker)
    assert isinstance(app.backend, ExampleBackend)
    assert isinstance(app.lock, ExampleLock)
    rows = {(row.scheme, row.kind, row.distribution) for row in plugins.list_schemes()}
    assert {("example", kind, "machinery-example") for kind in ("broker", "backend", "lock")} <= rows


class TestExamplePlugin(BrokerContract, BackendContract, LockContract, WorkerContract):
    contract_name = "example/example"
    strict_fixtures = IN_CI

    @pytest.fixture
    def broker_url(self) -> str:
        return f"example://{uuid.uuid4().hex}?lease=2"

    @pytest.fixture
    def backend_url(self, broker_url: str) -> str:
        return broker_url

    @pytest.fixture
    def lock_url(self, broker_url: str) -> str:
        return broker_url
