"""The contract kit for transport plugins (the guide: core/PLUGINS.md).

Abstract pytest classes a plugin author subclasses (their names have no ``Test`` prefix, so they are
not collected themselves)::

    import pytest
    from machinery.testing import BrokerContract, BackendContract

    class TestFooBroker(BrokerContract, BackendContract):
        @pytest.fixture
        def broker_url(self) -> str:
            return "foo://localhost:1234"

        @pytest.fixture
        def backend_url(self) -> str:
            return "foo://localhost:1234"

Add ``HostileInputContract`` to one class per broker: hostile messages against one worker, and
``EventsStoreContract`` to a backend that keeps events (:class:`machinery.events.SupportsEvents`).

Declared capabilities (:class:`machinery.capabilities.Capability`) decide which tests run: an
undeclared one is skipped with the reason ``capability X not declared by <Class>``, a declared one
must pass. The pytest plugin (entry point ``pytest11``, loaded automatically) prints per combination
the tests run, the skips and a few measurements at the end of the session.

Needs pytest: ``pip install 'machinery-core[testing]'``.
"""

from ._base import (
    ContractBase,
    NotApplicable,
    capabilities_of,
    default_contract_config,
    not_applicable,
    requires,
)
from .backend_contract import RESULT_VALUES, BackendContract
from .broker_contract import BrokerContract
from .events_contract import EventsStoreContract
from .hostile_contract import HostileInputContract
from .lock_contract import LockContract
from .servers import IN_CI, require_env, server_unavailable
from .tasks import make_app
from .worker_contract import FaultContract, WorkerContract


class TransportContract(BrokerContract, BackendContract, LockContract, WorkerContract):
    """Every non-fault contract at once: broker, backend, lock and workers."""


__all__ = [
    "IN_CI",
    "RESULT_VALUES",
    "BackendContract",
    "BrokerContract",
    "ContractBase",
    "EventsStoreContract",
    "FaultContract",
    "HostileInputContract",
    "LockContract",
    "NotApplicable",
    "TransportContract",
    "WorkerContract",
    "capabilities_of",
    "default_contract_config",
    "make_app",
    "not_applicable",
    "require_env",
    "requires",
    "server_unavailable",
]
