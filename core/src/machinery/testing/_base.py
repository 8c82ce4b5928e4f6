"""The base of every contract class: the fixtures an author supplies, factories, capability checks."""

from __future__ import annotations

import contextlib
import copy
import importlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import pytest

from .. import plugins
from ..backend import Backend
from ..broker import Broker, SupportsRawPublish
from ..config import Config
from ..lock import Lock
from ._report import REPORT_KEY

__all__ = [
    "ContractBase",
    "NotApplicable",
    "capabilities_of",
    "combination_name",
    "default_contract_config",
    "not_applicable",
    "requires",
]

Kind = Literal["broker", "backend", "lock"]
F = TypeVar("F", bound=Callable[..., Any])


class NotApplicable:
    """Returned by a fault fixture to say the fault does not exist for this transport
    (``sqlite://`` has no credentials). The test is skipped with ``reason``; unlike a missing
    fixture this is never a failure in strict mode."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"NotApplicable({self.reason!r})"


def not_applicable(reason: str) -> NotApplicable:
    """``return not_applicable("no credentials: a file")`` from a fault fixture."""
    return NotApplicable(reason)


def combination_name(cls: type) -> str:
    """The label of a test class in the kit's report: ``contract_name`` or the class name."""
    return str(getattr(cls, "contract_name", "") or cls.__name__)


def capabilities_of(obj: object) -> frozenset[str]:
    """The capabilities an object declares (none when it has no ``capabilities`` attribute)."""
    return frozenset(getattr(obj, "capabilities", frozenset()))


def requires(*capabilities: str, of: Kind) -> Callable[[F], F]:
    """Run the test only when the ``of`` object declares every capability; otherwise skip it with
    the reason ``capability X not declared by <Class>``."""

    def mark(fn: F) -> F:
        for capability in capabilities:
            fn = pytest.mark.machinery_requires(capability, of=of)(fn)
        return fn

    return mark


def default_contract_config() -> Config:
    """Short leases, fast requeues: the config the fault and redelivery tests expect by default.

    ``sqlite.lease`` 2 s (renewed every 0.5 s), unregistered tasks fail after 2 requeues and 0.5 s,
    workers wait at most 5 s for running tasks when stopped and notice ``quit()`` within
    0.2 s. Plugins set their own equivalents in their ``contract_config`` fixture (and
    ``lease_seconds`` on the class).
    """
    config = Config()
    config.sqlite.lease = 2.0
    config.sqlite.renew = 0.5
    config.worker.unregistered_requeue_limit = 2
    config.worker.unregistered_requeue_seconds = 0.5
    config.worker.shutdown_grace = 5.0
    config.worker.default_concurrency = 4
    config.worker.poll_timeout = 0.2  # workers notice quit() within 0.2 s: faster teardowns
    config.no_unix_signals = True
    return config


class ContractBase:
    """Fixtures and helpers shared by the contract classes. Subclass one of the contract classes,
    not this one.

    Class attributes a combination may set:

    - ``contract_name``: the label in the end-of-session report (default: the class name).
    - ``strict_fixtures``: a fault fixture that returns None (not provided) fails the test instead of
      skipping it (tests/contract sets it in CI).
    - ``lease_seconds``: the lease / visibility timeout ``contract_config`` gives the broker; the
      redelivery tests wait up to ``2 * lease_seconds + 3`` seconds for a message to come back.
    - ``timeout_scale``: multiplies every deadline of the kit (slow emulators).
    - ``plugin_modules``: modules with ``@hookimpl`` functions to register in this process and in the
      kit's child processes (for a plugin that is not installed through an entry point).
    """

    contract_name: ClassVar[str] = ""
    strict_fixtures: ClassVar[bool] = False
    lease_seconds: ClassVar[float] = 2.0
    timeout_scale: ClassVar[float] = 1.0
    plugin_modules: ClassVar[tuple[str, ...]] = ()

    config: Config
    workdir: Path
    request: pytest.FixtureRequest

    # -- fixtures an author supplies -------------------------------------------------------------
    @pytest.fixture
    def broker_url(self) -> str | None:
        """The broker URL to test (override). Each test should get its own namespace if the store
        is shared (the kit already uses a fresh queue name per test)."""
        return None

    @pytest.fixture
    def backend_url(self) -> str | None:
        """The result backend URL to test (override)."""
        return None

    @pytest.fixture
    def lock_url(self) -> str | None:
        """The lock URL to test (override)."""
        return None

    @pytest.fixture
    def contract_config(self) -> Config:
        """The Config every object is built with (override to shorten the plugin's own leases)."""
        return default_contract_config()

    @pytest.fixture
    def restart_server(self) -> Callable[[], None] | NotApplicable | None:
        """A callable that restarts the server (returns once it accepts connections again)."""
        return None

    @pytest.fixture
    def bad_credentials_url(self) -> str | NotApplicable | None:
        """A URL of the real server with a wrong password in it."""
        return None

    @pytest.fixture
    def unreachable_url(self) -> str | NotApplicable | None:
        """A URL (with a password in it, where the scheme has one) of a server that is not there."""
        return None

    @pytest.fixture
    def publish_raw(self) -> Callable[[str, bytes], None] | None:
        """A callable ``(queue, body)`` putting raw bytes on a queue (malformed messages). The
        default uses the broker's own ``publish_raw(queue, body)`` method when it has one."""
        probe = self._maybe_new("broker")
        if not isinstance(probe, SupportsRawPublish):
            return None

        def publish(queue: str, body: bytes) -> None:
            broker: Any = self.new_broker()
            broker.publish_raw(queue, body)

        return publish

    # -- factories (override instead of the URL fixtures when objects need more than a URL) -------
    def make_broker(self, url: str | None, config: Config) -> Broker:
        if not url:
            pytest.fail(f"{type(self).__name__}: supply a broker_url fixture or override make_broker")
        return plugins.resolve_broker(url, config)

    def make_backend(self, url: str | None, config: Config) -> Backend:
        if not url:
            pytest.fail(f"{type(self).__name__}: supply a backend_url fixture or override make_backend")
        return plugins.resolve_backend(url, config)

    def make_lock(self, url: str | None, config: Config) -> Lock:
        if not url:
            pytest.fail(f"{type(self).__name__}: supply a lock_url fixture or override make_lock")
        return plugins.resolve_lock(url, config)

    # -- set-up ------------------------------------------------------------------------------------
    @pytest.fixture(autouse=True)
    def _contract_setup(
        self,
        request: pytest.FixtureRequest,
        tmp_path: Path,
        broker_url: str | None,
        backend_url: str | None,
        lock_url: str | None,
        contract_config: Config,
    ) -> Iterator[None]:
        self.request = request
        self.workdir = tmp_path
        self.config = contract_config
        self.urls: dict[str, str | None] = {"broker": broker_url, "backend": backend_url, "lock": lock_url}
        self._closers: list[Callable[[], object]] = []
        self._probes: dict[str, Any] = {}
        self.register_plugin_modules(self.plugin_modules)
        for mark in request.node.iter_markers("machinery_requires"):
            capability = str(mark.args[0])
            kind = mark.kwargs["of"]
            self.require(kind, capability)
        try:
            yield
        finally:
            for close in reversed(self._closers):
                with contextlib.suppress(Exception):
                    close()

    @staticmethod
    def register_plugin_modules(modules: tuple[str, ...] | list[str]) -> None:
        manager = plugins.get_plugin_manager()
        for name in modules:
            module = importlib.import_module(name)
            if not manager.is_registered(module):
                manager.register(module, name=f"contract:{name}")

    # -- helpers for tests -------------------------------------------------------------------------
    @property
    def combination(self) -> str:
        return combination_name(type(self))

    def t(self, seconds: float) -> float:
        """A deadline of ``seconds``, scaled by ``timeout_scale``."""
        return seconds * self.timeout_scale

    def record(self, metric: str, text: str) -> None:
        """Add a line to this combination's part of the end-of-session report."""
        report = self.request.config.stash.get(REPORT_KEY, None)
        if report is not None:
            report.record(self.combination, metric, text)

    def closing(self, close: Callable[[], object]) -> None:
        """Call ``close`` when the test ends (in reverse order of registration)."""
        self._closers.append(close)

    def config_copy(self, **changes: Any) -> Config:
        """A copy of ``contract_config`` with top-level fields changed."""
        config = copy.copy(self.config)
        for name, value in changes.items():
            setattr(config, name, value)
        return config

    def new_broker(self, config: Config | None = None) -> Broker:
        """A new broker object (a new connection), closed when the test ends."""
        broker = self.make_broker(self.urls["broker"], config or self.config)
        self.closing(broker.close)
        return broker

    def new_backend(self, config: Config | None = None) -> Backend:
        backend = self.make_backend(self.urls["backend"], config or self.config)
        self.closing(backend.close)
        return backend

    def new_lock(self, config: Config | None = None) -> Lock:
        lock = self.make_lock(self.urls["lock"], config or self.config)
        self.closing(lock.close)
        return lock

    def _maybe_new(self, kind: Kind) -> Any:
        if kind not in self._probes:
            factory = {"broker": self.new_broker, "backend": self.new_backend, "lock": self.new_lock}[kind]
            self._probes[kind] = factory()
        return self._probes[kind]

    def require(self, kind: Kind, capability: str) -> None:
        """Skip the test unless the ``kind`` object declares ``capability``."""
        obj = self._maybe_new(kind)
        if capability not in capabilities_of(obj):
            pytest.skip(f"capability {capability} not declared by {type(obj).__name__}")

    def need(self, name: str, value: Any) -> Any:
        """``value`` of the fault fixture ``name``; skips (or fails, when ``strict_fixtures``) when the
        combination does not provide it, skips when it returned :func:`not_applicable`."""
        if isinstance(value, NotApplicable):
            pytest.skip(f"not applicable to {self.combination}: {value.reason}")
        if value is None:
            message = f"fixture {name} not provided by {type(self).__name__}"
            if self.strict_fixtures:
                pytest.fail(message + " (strict_fixtures)")
            pytest.skip(message)
        return value

    def need_url(self, kind: Kind) -> str:
        """The URL of ``kind``: tests with separate processes rebuild objects from URLs."""
        url = self.urls[kind]
        if not url:
            pytest.skip(
                f"fixture {kind}_url not provided by {type(self).__name__} (needed by child processes)"
            )
        return url
