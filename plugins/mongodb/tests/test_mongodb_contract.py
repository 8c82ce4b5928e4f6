"""The contract kit (``machinery.testing``) on scripts/services' MongoDB-wire server (SecantusDB).

One combination, redis broker + mongodb results and lock: the backend and lock contracts, every
worker scenario (threads and processes), and the fault tests (SIGKILL of a worker, a restart of the
MongoDB server mid-run, wrong credentials, an unreachable server). The backend and lock contracts do
not depend on the broker, so they are not repeated for amqp/mongodb or sqlite/mongodb.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from mongodb_testlib import IN_CI, mongodb_url, redis_url, restart_mongodb

from machinery import Config, Signature
from machinery.testing import (
    BackendContract,
    FaultContract,
    LockContract,
    WorkerContract,
    default_contract_config,
)
from machinery.testing._util import unique
from machinery.workflow import Chord

pytestmark = pytest.mark.services


class TestRedisBrokerMongoBackend(BackendContract, LockContract, WorkerContract, FaultContract):
    contract_name = "redis/mongodb"
    strict_fixtures = IN_CI
    lease_seconds = 2.0

    @pytest.fixture
    def contract_config(self) -> Config:
        config = default_contract_config()
        config.redis.delayed_tasks_poll_period = 100
        config.redis.connect_timeout = 3
        return config

    @pytest.fixture
    def broker_url(self) -> str:
        return f"{redis_url()}?lease=2&heartbeat=0.5"

    @pytest.fixture
    def backend_url(self) -> str:
        return mongodb_url()

    @pytest.fixture
    def lock_url(self) -> str:
        return mongodb_url()

    @pytest.fixture
    def restart_server(self) -> Callable[[], None]:
        mongodb_url()  # skip (or fail in CI) when the server is not running
        return restart_mongodb

    @pytest.fixture
    def bad_credentials_url(self) -> str:
        # SecantusDB runs without required auth but checks any credentials a client sends
        return mongodb_url("authSource=admin").replace("mongodb://", "mongodb://nobody:wrong-s3cret-pw@", 1)

    @pytest.fixture
    def unreachable_url(self) -> str:
        return "mongodb://machinery:s3cret-pw@127.0.0.1:1/machinery_test?serverSelectionTimeoutMS=3000"

    def test_chord_callback_fires_once_across_two_worker_processes(self) -> None:
        """2 worker processes x 8 threads finish the members of 30 chords at nearly the same time:
        each callback runs exactly once (Go's MongoDB backend answered every trigger with true)."""
        app = self.producer()
        for tag in ("chord-a", "chord-b"):
            self.start_worker("process", concurrency=8, tag=unique(tag))
        keys = [unique("chord") for _ in range(30)]
        results = [
            app.send_chord(
                Chord(
                    [Signature("add", args=[i, n]) for i in range(8)],
                    Signature("record", args=[key], immutable=True),
                )
            )
            for n, key in enumerate(keys)
        ]
        assert [self.get(r) for r in results] == keys
        runs = {key: self.runlog.count(key, "done") for key in keys}
        assert all(n == 1 for n in runs.values()), f"callback runs per chord: {runs}"
