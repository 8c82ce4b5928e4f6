"""The contract kit on ``example://`` (no server: the store lives in this process).

``pytest tests`` in this package runs it; in the Machinery repository tests/contract/test_example_plugin.py
runs this file. A transport with a server reads its URL from the environment with
``machinery.testing.require_env`` (a failure in CI, a skip elsewhere) and adds ``FaultContract``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import uuid

import pytest

from machinery import Config, Machinery, plugins
from machinery.testing import (
    IN_CI,
    BackendContract,
    BrokerContract,
    HostileInputContract,
    LockContract,
    WorkerContract,
)


def test_found_by_its_url_scheme() -> None:
    app = Machinery(
        Config(broker="example://found", result_backend="example://found", lock="example://found")
    )
    assert type(app.broker).__name__ == "ExampleBroker"
    assert type(app.backend).__name__ == "ExampleBackend"
    assert type(app.lock).__name__ == "ExampleLock"
    rows = {(row.scheme, row.kind, row.distribution) for row in plugins.list_schemes()}
    assert {("example", kind, "machinery-example") for kind in ("broker", "backend", "lock")} <= rows


def test_imports_lazily() -> None:
    """Loading the plugins (the entry point) imports none of the transport's classes."""
    probe = (
        "import sys; from machinery import plugins; plugins.get_plugin_manager(); "
        "print(sorted(m for m in sys.modules if m.startswith('machinery_example')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    loaded = set(ast.literal_eval(out))
    assert "machinery_example.plugin" in loaded, "the entry point was not loaded"
    heavy = loaded & {f"machinery_example.{m}" for m in ("broker", "backend", "lock", "store")}
    assert not heavy, f"loading the plugin imported {sorted(heavy)}: import them inside the hooks"


class _ExampleURLs:
    """One store per test, broker, backend and lock on it. The lease is 2 s (renewed every 0.67 s), so
    the lease and redelivery checks take seconds; ``lease_seconds`` tells the kit."""

    strict_fixtures = IN_CI
    lease_seconds = 2.0

    @pytest.fixture
    def broker_url(self) -> str:
        return f"example://{uuid.uuid4().hex}?lease={self.lease_seconds:g}"

    @pytest.fixture
    def backend_url(self, broker_url: str) -> str:
        return broker_url

    @pytest.fixture
    def lock_url(self, broker_url: str) -> str:
        return broker_url


class TestExample(_ExampleURLs, BrokerContract, BackendContract, LockContract, WorkerContract):
    """Broker, backend, lock and workers on one store."""

    contract_name = "example/example"


class TestExampleHostile(_ExampleURLs, HostileInputContract):
    """Hostile messages and misbehaving tasks against a worker on this broker (once per broker)."""

    contract_name = "example/example hostile"
