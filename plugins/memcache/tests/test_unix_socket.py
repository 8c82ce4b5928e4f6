"""``memcache:///path.sock``: a memcached of the test's own listening on a unix socket."""

from __future__ import annotations

import tempfile
from pathlib import Path

from memcache_testlib import own_memcached

from machinery import Config
from machinery.signature import Arg, State, TaskState, new_uuid
from machinery_memcache import MemcacheBackend, MemcacheLock


def test_backend_and_lock_over_a_unix_socket() -> None:
    # memcached runs as nobody (under root), so the socket's folder must be open to it
    with tempfile.TemporaryDirectory(prefix="machinery-memcache-") as name:
        folder = Path(name)
        folder.chmod(0o777)
        run_over_socket(folder / "memcached.sock")


def run_over_socket(sock: Path) -> None:
    with own_memcached("-s", str(sock), "-a", "0777"):
        url = f"memcache://{sock}"
        backend = MemcacheBackend.from_url(url, Config())
        uuid = new_uuid()
        backend.set_state(TaskState(uuid, State.SUCCESS, "add", results=[Arg(5, "int64")]))
        got = backend.get_state(uuid)
        assert got is not None and got.values == [5]
        lock = MemcacheLock.from_url(url, Config())
        assert lock.acquire("socket-lock", 10)
        assert not MemcacheLock.from_url(url, Config()).acquire("socket-lock", 10)
        backend.close()
        lock.close()
