"""A memcached restart (``scripts/services restart memcached``, which this plugin's tests own): memcached
keeps nothing in memory across it, and the backend and lock carry on over their stale pooled
connections without an error."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from memcache_testlib import cluster_url

from machinery import Config
from machinery.signature import Arg, State, TaskState, new_uuid
from machinery_memcache import MemcacheBackend, MemcacheLock

pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parents[3]


def restart_memcached() -> None:
    command = [str(REPO / "scripts" / "services"), "restart", "memcached"]
    subprocess.run(command, check=True, capture_output=True)


def test_results_are_gone_after_a_restart_and_clients_reconnect() -> None:
    url = cluster_url()
    backend = MemcacheBackend.from_url(url, Config())
    lock, other = MemcacheLock.from_url(url, Config()), MemcacheLock.from_url(url, Config())
    uuids = [new_uuid() for _ in range(20)]  # on both servers: a pooled connection to each
    backend.set_states([TaskState(u, State.SUCCESS, "add", results=[Arg(1, "int64")]) for u in uuids])
    assert all(backend.get_states(uuids))
    held = new_uuid("lock")
    assert lock.acquire(held, 60) and not other.acquire(held, 60)

    restart_memcached()

    assert backend.get_states(uuids) == [None] * 20, "memcached keeps nothing across a restart"
    backend.set_state(TaskState(uuids[0], State.SUCCESS, "add", results=[Arg(2, "int64")]))
    got = backend.get_state(uuids[0])
    assert got is not None and got.values == [2]
    fresh = new_uuid("lock")
    assert other.acquire(fresh, 60), "a lock taken over a stale connection"
    assert not lock.acquire(fresh, 60)
    assert lock.acquire(held, 60), "the restart freed every lock"
    for closing in (backend, lock, other):
        closing.close()
