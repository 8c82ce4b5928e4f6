"""Compatibility (issue 15, item 7): a plugin written against machinery-core 0.1's documented hooks and
protocols still works through the contract kit. legacy_plugin/legacy_example.py is that plugin, loaded
by registering its module with the plugin manager (``plugin_modules``), as a test would for a plugin
that is not installed. Deprecation warnings are allowed, failures are not.
"""

from __future__ import annotations

import sys
import uuid
import warnings
from pathlib import Path

import pytest

from machinery import Config, Machinery
from machinery.testing import BackendContract, BrokerContract, LockContract, WorkerContract

from .conftest import IN_CI

sys.path.insert(0, str(Path(__file__).resolve().parent / "legacy_plugin"))


def test_built_from_its_url_with_at_most_deprecation_warnings() -> None:
    LegacyContract.register_plugin_modules(LegacyContract.plugin_modules)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        app = Machinery(
            Config(broker="legacy://built", result_backend="legacy://built", lock="legacy://built")
        )
        assert [type(o).__name__ for o in (app.broker, app.backend, app.lock)] == [
            "ExampleBroker",
            "ExampleBackend",
            "ExampleLock",
        ]
        app.close()
    others = [w for w in caught if not issubclass(w.category, DeprecationWarning)]
    assert not others, f"warnings other than deprecations: {[str(w.message) for w in others]}"


class LegacyContract(BrokerContract, BackendContract, LockContract, WorkerContract):
    contract_name = "legacy/legacy"
    strict_fixtures = IN_CI
    plugin_modules = ("legacy_example",)

    @pytest.fixture
    def broker_url(self) -> str:
        return f"legacy://{uuid.uuid4().hex}?lease=2"

    @pytest.fixture
    def backend_url(self, broker_url: str) -> str:
        return broker_url

    @pytest.fixture
    def lock_url(self, broker_url: str) -> str:
        return broker_url


class TestLegacyPlugin(LegacyContract):
    @pytest.mark.xfail(
        strict=True,
        reason="the 0.1 example never renewed its leases (issue 15): the kit catches that now, as it should",
    )
    def test_worker_task_longer_than_the_lease_runs_once(self) -> None:
        super().test_worker_task_longer_than_the_lease_runs_once()
