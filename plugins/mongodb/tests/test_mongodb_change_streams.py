"""``wait()`` on a server with change streams: a one-member replica set of the tests' own (SecantusDB),
since scripts/services' server is standalone. With ``wait=change_stream`` the backend declares
``push_wait``, so the kit holds it to waking within 50 ms of the write in 8 of 10 tries; ``auto`` must
find the change streams by itself, and a standalone server must refuse ``wait=change_stream`` clearly.
"""

from __future__ import annotations

import threading
import time

import pytest
from mongodb_testlib import TEST_DB, mongodb_url

from machinery import Config
from machinery.errors import BackendError
from machinery.signature import Arg, State, TaskState, new_uuid
from machinery.testing import BackendContract
from machinery_mongodb import MongoBackend

pytestmark = pytest.mark.services


class TestChangeStreamWait(BackendContract):
    """The waiting part of the backend contract (the rest runs in test_mongodb_contract.py)."""

    contract_name = "mongodb replica set (change streams)"

    @pytest.fixture
    def backend_url(self, replica_set_port: int) -> str:
        return f"mongodb://127.0.0.1:{replica_set_port}/{TEST_DB}?replicaSet=rs0&wait=change_stream"


# Only the waits run here; deselecting the rest keeps the kit's own tests intact.
for _name in list(vars(BackendContract)):
    if _name.startswith("test_") and "wait" not in _name and _name != "test_backend_unknown_uuid":
        setattr(TestChangeStreamWait, _name, None)


def test_auto_mode_finds_change_streams_and_wakes_at_once(replica_set_port: int) -> None:
    url = f"mongodb://127.0.0.1:{replica_set_port}/{TEST_DB}?replicaSet=rs0"
    waiter, writer = MongoBackend.from_url(url, Config()), MongoBackend.from_url(url, Config())
    uuid = new_uuid()
    found: dict[str, TaskState] = {}
    thread = threading.Thread(target=lambda: found.update(waiter.wait([uuid], 10)))
    thread.start()
    time.sleep(0.3)  # the waiter is blocked in the stream by now: the wake time is what is measured
    written = time.monotonic()
    writer.set_state(TaskState(uuid, State.SUCCESS, "t", results=[Arg(7, "int64")]))
    thread.join(10)
    woke = time.monotonic() - written
    assert found[uuid].values == [7]
    assert waiter.change_streams is True, "auto mode did not use the server's change streams"
    assert woke < 0.2, f"woke {woke * 1000:.0f} ms after the write"
    waiter.close()
    writer.close()


def test_auto_mode_polls_on_a_standalone_server() -> None:
    backend = MongoBackend.from_url(mongodb_url(), Config())
    uuid = new_uuid()
    backend.set_state(TaskState(uuid, State.FAILURE, "t", error="boom"))
    assert backend.wait([uuid], 5)[uuid].error == "boom"
    assert backend.change_streams is False, "a standalone server has no change streams"
    backend.close()


def test_forced_change_streams_on_a_standalone_server_fail_clearly() -> None:
    backend = MongoBackend.from_url(mongodb_url("wait=change_stream"), Config())
    with pytest.raises(BackendError, match="change stream") as info:
        backend.wait([new_uuid()], 1)
    assert "replica set" in str(info.value)
    backend.close()
