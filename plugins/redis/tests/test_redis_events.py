"""The events store contract (machinery.events) on a standalone Redis and on the cluster."""

from __future__ import annotations

from typing import ClassVar

import pytest
from redis_testlib import IN_CI, require_env, with_db

from machinery.testing import EventsStoreContract

pytestmark = pytest.mark.services


class TestRedisEvents(EventsStoreContract):
    contract_name = "redis events"
    strict_fixtures = IN_CI
    #: XADD MAXLEN ~ trims whole stream nodes (100 entries by default)
    max_events_slack: ClassVar[int] = 100

    @pytest.fixture
    def backend_url(self) -> str:
        return with_db(require_env("REDIS_URL"))


class TestRedisClusterEvents(TestRedisEvents):
    contract_name = "redis-cluster events"

    @pytest.fixture
    def backend_url(self) -> str:
        return f"redis://{require_env('REDIS_CLUSTER_NODES')}/0"
