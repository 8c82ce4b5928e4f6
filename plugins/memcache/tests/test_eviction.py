"""memcached is a cache: under memory pressure it evicts the least recently used items, results
included, before their expiry. Shown on a small memcached of the test's own (``-m 2``), and the
setting that trades eviction for refused writes (``-M``).

memcached evicts within a slab class (items of similar size), so the result that disappears is one
of about the same size as the ones written after it.
"""

from __future__ import annotations

import pytest
from memcache_testlib import own_memcached
from pymemcache.client.base import Client  # type: ignore[import-untyped]

from machinery import Config, codec
from machinery.signature import State, TaskState, new_uuid
from machinery_memcache import MemcacheBackend, OutOfMemoryError

#: ~4 KiB per result: 2 000 of them (8 MiB) do not fit in 2 MiB
PAYLOAD = "r" * 4096
ROUNDS = 20
BATCH = 100


def fill(backend: MemcacheBackend) -> None:
    for _ in range(ROUNDS):
        backend.set_states(
            [
                TaskState(new_uuid(), State.SUCCESS, "blob", results=codec.results_from_return(PAYLOAD))
                for _ in range(BATCH)
            ]
        )


def evictions(port: int) -> int:
    client = Client(("127.0.0.1", port))
    try:
        return int(client.stats()[b"evictions"])
    finally:
        client.close()


def test_memory_pressure_evicts_a_result_before_its_expiry() -> None:
    with own_memcached("-m", "2") as port:
        backend = MemcacheBackend.from_url(f"memcache://127.0.0.1:{port}", Config(results_expire_in=86400))
        first = new_uuid()
        backend.set_state(TaskState(first, State.SUCCESS, "precious", results=[codec.Arg(PAYLOAD, "string")]))
        assert backend.get_state(first) is not None
        fill(backend)
        assert backend.get_state(first) is None, "the first result should have been evicted (a day early)"
        assert evictions(port) > 0
        backend.close()


def test_with_dash_m_upper_the_server_refuses_writes_instead_of_evicting() -> None:
    with own_memcached("-m", "2", "-M") as port:
        backend = MemcacheBackend.from_url(f"memcache://127.0.0.1:{port}", Config(results_expire_in=86400))
        first = new_uuid()
        backend.set_state(TaskState(first, State.SUCCESS, "precious", results=[codec.Arg(PAYLOAD, "string")]))
        with pytest.raises(OutOfMemoryError) as info:
            fill(backend)
        assert "-M" in str(info.value) and f"127.0.0.1:{port}" in str(info.value)
        kept = backend.get_state(first)
        assert kept is not None and kept.values == [PAYLOAD], "with -M nothing stored is dropped early"
        assert evictions(port) == 0
        backend.close()
