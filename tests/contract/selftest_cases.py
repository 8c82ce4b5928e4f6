"""Contract classes wired to the broken transports of broken_plugins.py.

Not collected by a normal run (the file name has no test_ prefix): test_kit_selftest.py runs chosen
tests of it in a child pytest and checks that each one fails (or skips) as it should.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from broken_plugins import (
    AckEarlyBroker,
    CloseKeepsLeasesBroker,
    DoubleChordBackend,
    DroppingBroker,
    FreshAfterNackBroker,
    LocalEtaBroker,
    NeverRedeliversBroker,
    NoopAckBroker,
    NoopAckManyBroker,
    NoRenewalBroker,
    PollingPushBackend,
    PurgeKeepsEtaBroker,
    RaisingConsumeBroker,
    SingleActiveConsumerBroker,
    UnknownChordFalseBackend,
)

from machinery.backend import Backend
from machinery.broker import Broker
from machinery.config import Config
from machinery.testing import BackendContract, BrokerContract, FaultContract, WorkerContract


class _Memory:
    @pytest.fixture
    def broker_url(self) -> str:
        return f"memory://{uuid.uuid4().hex}"

    @pytest.fixture
    def backend_url(self, broker_url: str) -> str:
        return broker_url


class TestDoubleChordBackend(_Memory, BackendContract):
    chord_groups = 50

    def make_backend(self, url: str | None, config: Config) -> Backend:
        return DoubleChordBackend.from_url(url or "memory://", config)


class TestPollingPushBackend(_Memory, BackendContract):
    def make_backend(self, url: str | None, config: Config) -> Backend:
        return PollingPushBackend.from_url(url or "memory://", config)


class TestDroppingBroker(_Memory, BrokerContract):
    def make_broker(self, url: str | None, config: Config) -> Broker:
        return DroppingBroker.from_url(url or "memory://", config)


class TestNeverRedeliversBroker(_Memory, BrokerContract):
    def make_broker(self, url: str | None, config: Config) -> Broker:
        return NeverRedeliversBroker.from_url(url or "memory://", config)


class TestAckEarlyBroker(BrokerContract, FaultContract):
    """brokenack:// is sqlite:// acking at consume time; the worker processes load it too."""

    plugin_modules = ("broken_plugins",)
    result_timeout = 4.0

    @pytest.fixture
    def broker_url(self, tmp_path: Path) -> str:
        return f"brokenack:///{tmp_path / 'db.sqlite'}"

    @pytest.fixture
    def backend_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'db.sqlite'}"

    def make_broker(self, url: str | None, config: Config) -> Broker:
        assert url is not None
        return AckEarlyBroker.from_url("sqlite://" + url[len("brokenack://") :], config)


class TestStrictMissingFixture(_Memory, FaultContract):
    strict_fixtures = True


class TestLenientMissingFixture(_Memory, FaultContract):
    contract_name = "lenient"


# -- issue 15: one broken transport per new check ----------------------------------------------------
class _SQLiteFile:
    """A sqlite file per test (the default contract config: lease 2 s, renewed every 0.5 s)."""

    @pytest.fixture
    def broker_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'db.sqlite'}"

    @pytest.fixture
    def backend_url(self, broker_url: str) -> str:
        return broker_url


class TestNoRenewalBroker(_SQLiteFile, WorkerContract):
    def make_broker(self, url: str | None, config: Config) -> Broker:
        return NoRenewalBroker.from_url(url or "", config)


class TestNoopAckBroker(_SQLiteFile, BrokerContract):
    def make_broker(self, url: str | None, config: Config) -> Broker:
        return NoopAckBroker.from_url(url or "", config)


class TestNoopAckManyBroker(_SQLiteFile, BrokerContract):
    def make_broker(self, url: str | None, config: Config) -> Broker:
        return NoopAckManyBroker.from_url(url or "", config)


class TestCloseKeepsLeasesBroker(_SQLiteFile, BrokerContract):
    def make_broker(self, url: str | None, config: Config) -> Broker:
        return CloseKeepsLeasesBroker.from_url(url or "", config)


class TestRaisingConsumeBroker(_Memory, BrokerContract):
    def make_broker(self, url: str | None, config: Config) -> Broker:
        return RaisingConsumeBroker.from_url(url or "memory://", config)


class TestLocalEtaBroker(_Memory, BrokerContract):
    def make_broker(self, url: str | None, config: Config) -> Broker:
        return LocalEtaBroker.from_url(url or "memory://", config)


class TestSingleActiveConsumerBroker(_Memory, BrokerContract):
    def make_broker(self, url: str | None, config: Config) -> Broker:
        return SingleActiveConsumerBroker.from_url(url or "memory://", config)


class TestFreshAfterNackBroker(_Memory, BrokerContract):
    def make_broker(self, url: str | None, config: Config) -> Broker:
        return FreshAfterNackBroker.from_url(url or "memory://", config)


class TestPurgeKeepsEtaBroker(_Memory, BrokerContract):
    def make_broker(self, url: str | None, config: Config) -> Broker:
        return PurgeKeepsEtaBroker.from_url(url or "memory://", config)


class TestUnknownChordFalseBackend(_Memory, BackendContract):
    def make_backend(self, url: str | None, config: Config) -> Backend:
        return UnknownChordFalseBackend.from_url(url or "memory://", config)
