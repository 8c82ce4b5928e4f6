"""The events store contract (machinery.events) on scripts/services' MongoDB-wire server."""

from __future__ import annotations

from typing import ClassVar

import pytest
from mongodb_testlib import IN_CI, mongodb_url

from machinery.testing import EventsStoreContract

pytestmark = pytest.mark.services


class TestMongoEvents(EventsStoreContract):
    contract_name = "mongodb events"
    strict_fixtures = IN_CI
    #: trimmed back to max_events once a tenth more are stored (40 in the contract: 4)
    max_events_slack: ClassVar[int] = 4

    @pytest.fixture
    def backend_url(self) -> str:
        return mongodb_url()
