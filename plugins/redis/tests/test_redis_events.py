"""The events store contract (machinery.events) on a standalone Redis and on the cluster."""

from __future__ import annotations

import copy
import time
import uuid
from typing import Any, ClassVar

import pytest
from redis_testlib import IN_CI, require_env, with_db

from machinery.testing import EventsStoreContract
from machinery.testing.events_contract import _event
from machinery_redis.events import BUCKET_PREFIX, BUCKETS, tasks_per_bucket

pytestmark = pytest.mark.services


class TestRedisEvents(EventsStoreContract):
    contract_name = "redis events"
    strict_fixtures = IN_CI
    #: XADD MAXLEN ~ trims whole stream nodes (100 entries by default)
    max_events_slack: ClassVar[int] = 100

    @pytest.fixture
    def backend_url(self) -> str:
        return with_db(require_env("REDIS_URL"))

    def test_task_index_is_bounded_like_the_stream(self) -> None:
        """A bucket of the task index goes once all its ids are trimmed from the stream: after 1,000
        one-event tasks with max_events 40, the index holds about the stream's tasks, not 1,000 (with a
        key per task, as before, every task stayed indexed until results_expire_in)."""
        config = copy.copy(self.config)
        config.events.max_events = 40
        store: Any = self.events_backend(config)
        tasks = [f"bounded_{uuid.uuid4().hex}" for _ in range(1000)]
        now = time.time()
        for start in range(0, len(tasks), 50):
            store.record_events([_event(t, at=now) for t in tasks[start : start + 50]])
        [buckets] = store.conn.run([("ZRANGE", BUCKETS, 0, -1)])
        fields = store.conn.run([("HKEYS", BUCKET_PREFIX + b.decode()) for b in buckets])
        indexed = {f.decode() for names in fields for f in names} & set(tasks)
        assert tasks[-1] in indexed, "the newest task is not indexed"
        bound = 40 + self.max_events_slack + 2 * tasks_per_bucket(40)
        assert len(indexed) <= bound, f"{len(indexed)} of 1,000 tasks still indexed with max_events 40"
        assert len(store.task_events(tasks[-1])) == 1
        assert store.task_events(tasks[0]) == []


class TestRedisClusterEvents(TestRedisEvents):
    contract_name = "redis-cluster events"

    @pytest.fixture
    def backend_url(self) -> str:
        return f"redis://{require_env('REDIS_CLUSTER_NODES')}/0"
