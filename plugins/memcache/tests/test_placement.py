"""Which server holds which key: gomemcache's rule, checked by hand and on the two real servers.

gomemcache (``ServerList.PickServer``): one server → that one; else CRC-32 (IEEE) of the key modulo
the server count, servers in list order. The expected placements below were worked out by hand from
the published CRC-32 check values, not computed by the code under test.
"""

from __future__ import annotations

import pytest
from pymemcache.client.base import Client  # type: ignore[import-untyped]
from pymemcache.client.hash import HashClient  # type: ignore[import-untyped]

from machinery import Config
from machinery.signature import Arg, State, TaskState, new_uuid
from machinery_memcache import MemcacheBackend, Server
from machinery_memcache.client import Cluster, gomemcache_index
from machinery_memcache.url import parse_url

pytestmark = pytest.mark.services

# CRC-32/ISO-HDLC (zlib, Go's crc32.ChecksumIEEE) check values from the CRC catalogue, and by hand:
#   "123456789"  0xCBF43926 = 3421780262: even → 0 of 2; digit sum 35 ≡ 2 (mod 3) → 2 of 3
#   "a"          0xE8B7BE43 = 3904355907: odd → 1 of 2;  digit sum 45 ≡ 0 (mod 3) → 0 of 3
#   "abc"        0x352441C2 =  891568578: even → 0 of 2; digit sum 57 ≡ 0 (mod 3) → 0 of 3
#   "The quick brown fox jumps over the lazy dog"
#                0x414FA339 = 1095738169: odd → 1 of 2;  digit sum 49 ≡ 1 (mod 3) → 1 of 3
HAND_COMPUTED = [
    (b"123456789", 0, 2),
    (b"a", 1, 0),
    (b"abc", 0, 0),
    (b"The quick brown fox jumps over the lazy dog", 1, 1),
]


def reference_crc32(data: bytes) -> int:
    """CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320) bit by bit: independent of zlib."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


@pytest.mark.parametrize(("key", "of_two", "of_three"), HAND_COMPUTED)
def test_gomemcache_placement_matches_hand_computation(key: bytes, of_two: int, of_three: int) -> None:
    assert gomemcache_index(key, 1) == 0
    assert gomemcache_index(key, 2) == of_two
    assert gomemcache_index(key, 3) == of_three
    cluster = Cluster(parse_url("memcache://s0:1,s1:2,s2:3"))
    assert cluster.server_for(key) == Server(f"s{of_three}", of_three + 1)


def test_gomemcache_placement_matches_a_bitwise_crc32() -> None:
    assert reference_crc32(b"123456789") == 0xCBF43926
    for _ in range(200):
        key = new_uuid().encode()
        assert gomemcache_index(key, 5) == reference_crc32(key) % 5


def test_duplicate_servers_weigh_twice_as_in_go() -> None:
    cluster = Cluster(parse_url("memcache://a:1,b:2,a:1"))
    counts = {Server("a", 1): 0, Server("b", 2): 0}
    for _ in range(3000):
        counts[cluster.server_for(new_uuid().encode())] += 1
    assert 1800 < counts[Server("a", 1)] < 2200, counts


def test_every_key_is_on_its_server_and_readable(url: str, nodes: list[Client]) -> None:
    """The two-server cluster: each state lives on exactly the server gomemcache picks, both servers
    get keys, and every key reads back through the URL (from a second backend object too)."""
    writer = MemcacheBackend.from_url(url, Config())
    reader = MemcacheBackend.from_url(url, Config())
    servers = parse_url(url).servers
    states = [TaskState(new_uuid(), State.SUCCESS, "add", results=[Arg(i, "int64")]) for i in range(300)]
    writer.set_states(states)  # set_many: one round trip per server
    on_node = [0] * len(nodes)
    for state in states:
        key = state.task_uuid.encode()
        expected = gomemcache_index(key, len(servers))
        for index, node in enumerate(nodes):
            held = node.get(key)
            assert (held is not None) == (index == expected), (
                f"{state.task_uuid} should be on {servers[expected]} only; found on {servers[index]}: "
                f"{held is not None}"
            )
        on_node[expected] += 1
    assert all(count > 50 for count in on_node), f"keys per server: {on_node}"
    got = reader.get_states([s.task_uuid for s in states])
    assert [g.values if g else None for g in got] == [[i] for i in range(300)]
    group = new_uuid("group")
    writer.init_group(group, [s.task_uuid for s in states])
    assert sum(s.is_completed for s in reader.group_states(group)) == 300
    writer.close()
    reader.close()


def test_single_server_url_uses_that_server_for_every_key(url: str, nodes: list[Client]) -> None:
    second = parse_url(url).servers[1]
    backend = MemcacheBackend.from_url(f"memcache://{second}", Config())
    uuids = [new_uuid() for _ in range(20)]
    backend.set_states([TaskState(u, State.PENDING, "add") for u in uuids])
    assert all(nodes[1].get(u) is not None for u in uuids)
    backend.close()


def test_rendezvous_option_agrees_with_pymemcache_hashclient(url: str) -> None:
    servers = parse_url(url).servers
    backend = MemcacheBackend.from_url(f"{url}?hashing=rendezvous", Config())
    uuids = [new_uuid() for _ in range(100)]
    backend.set_states([TaskState(u, State.PENDING, "add") for u in uuids])
    hashing = HashClient([(s.host, s.port) for s in servers], default_noreply=False)
    assert all(hashing.get(u) is not None for u in uuids), "pymemcache's HashClient cannot find the keys"
    placements = {backend.cluster.server_for(u.encode()) for u in uuids}
    assert placements == set(servers), "rendezvous hashing should spread keys over both servers"
    hashing.close()
    backend.close()
