"""The contract kit (``machinery.testing``) on the real memcached servers of ``scripts/services``.

- memcache (the two-server cluster of ``MEMCACHE_URL``): every backend and lock contract, including
  the chord race of 2 processes x 8 threads and the lock race across processes;
- redis/memcache: the worker scenarios (Go Machinery's integration suite) with a Redis broker, in
  threads and in worker processes. The other brokers would add nothing the backend cares about.
"""

from __future__ import annotations

import importlib.util

import pytest
from memcache_testlib import IN_CI, cluster_url, require_env, server_unavailable

from machinery import Chord, Group, Signature
from machinery.testing import BackendContract, LockContract, WorkerContract

pytestmark = pytest.mark.services

#: the Redis test database of plugins/redis (keys of these tests are unique queue names)
REDIS_TEST_DB = 7


class TestMemcacheCluster(BackendContract, LockContract):
    contract_name = "memcache (2 servers)"
    strict_fixtures = IN_CI

    @pytest.fixture
    def backend_url(self) -> str:
        return cluster_url()

    @pytest.fixture
    def lock_url(self) -> str:
        return cluster_url()


class TestRedisBrokerMemcacheBackend(WorkerContract):
    contract_name = "redis/memcache"
    strict_fixtures = IN_CI
    lease_seconds = 2.0

    @pytest.fixture
    def broker_url(self) -> str:
        if importlib.util.find_spec("machinery_redis") is None:
            server_unavailable("machinery-redis is not installed (make venv)")
        redis = require_env("REDIS_URL", "redis").rsplit("/", 1)[0]
        return f"{redis}/{REDIS_TEST_DB}?lease=2&heartbeat=0.5"

    @pytest.fixture
    def backend_url(self) -> str:
        return cluster_url()

    def test_chord_race_two_worker_processes_fire_each_callback_once(self) -> None:
        """2 worker processes x 8 threads finish the members of 16 chords at the same moments; every
        member runs the group check and trigger_chord, and each callback still runs exactly once."""
        chords, members = 16, 8
        app = self.producer()
        workers = [self.start_worker("process", concurrency=8) for _ in range(2)]
        results = []
        for c in range(chords):
            group = Group([Signature("record", args=[f"m{c}-{m}"]) for m in range(members)])
            callback = Signature("record", args=[f"callback{c}"], immutable=True)
            results.append(app.send_chord(Chord(group, callback)))
        assert [self.get(r) for r in results] == [f"callback{c}" for c in range(chords)]
        runs = {c: self.runlog.count(f"callback{c}", "done") for c in range(chords)}
        assert runs == dict.fromkeys(range(chords), 1), f"callback runs per chord: {runs}"
        member_pids = {
            e[1] for c in range(chords) for m in range(members) for e in self.runlog.events(f"m{c}-{m}")
        }
        assert len(member_pids) == 2, f"members ran in {len(member_pids)} process(es), not both workers"
        assert len(workers) == 2
