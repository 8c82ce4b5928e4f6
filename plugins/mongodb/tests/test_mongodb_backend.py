"""What the contract kit cannot see: the documents and indexes on the server, real deletion by the TTL
index, the 16 MiB limit, records written by Go Machinery, credentials and TLS. On scripts/services'
MongoDB-wire server (SecantusDB, TTL sweep every second) and, for TLS, a server of the tests' own."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson.int64 import Int64
from mongodb_testlib import TEST_DB, mongodb_url, redis_url, require_env

from machinery import Config, codec
from machinery.config import NEVER_EXPIRE
from machinery.errors import BackendError, UnknownGroupError
from machinery.signature import Arg, State, TaskState, new_uuid
from machinery.testing._util import eventually
from machinery_mongodb import MongoBackend, MongoLock, ResultTooLargeError

pytestmark = pytest.mark.services

SECRET = "wrong-s3cret-pw"


def config_with(**changes: Any) -> Config:
    config = Config()
    for name, value in changes.items():
        setattr(config, name, value)
    return config


@pytest.fixture
def backend() -> Iterator[MongoBackend]:
    backend = MongoBackend.from_url(mongodb_url(), Config())
    yield backend
    backend.close()


def test_documents_have_go_machinerys_shape(backend: MongoBackend, raw: Any) -> None:
    uuid, group = new_uuid(), new_uuid("group")
    created = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    backend.set_state(TaskState(uuid, State.PENDING, "add", created_at=created))
    backend.set_state(TaskState(uuid, State.SUCCESS, results=codec.results_from_return((2, "two", [1.5]))))
    backend.init_group(group, [uuid])
    before = datetime.now(UTC)
    doc = raw.tasks.find_one({"_id": uuid})
    assert set(doc) == {"_id", "state", "task_name", "results", "error", "created_at", "delete_at"}
    assert (doc["state"], doc["task_name"], doc["error"]) == ("SUCCESS", "add", "")
    assert doc["created_at"] == created, "created_at is a BSON date (milliseconds kept)"
    assert doc["results"] == [
        {"type": "int64", "value": 2},
        {"type": "string", "value": "two"},
        {"type": "[]float64", "value": [1.5]},
    ]
    # results_expire_in = 0 is the default 3600 s, as everywhere in Machinery (Go v2 expired at once)
    assert Config().results_expire_in == 3600
    zero = MongoBackend.from_url(mongodb_url(), config_with(results_expire_in=0))
    zero.set_state(TaskState(uuid, State.SUCCESS))
    delete_at = raw.tasks.find_one({"_id": uuid})["delete_at"]
    assert timedelta(seconds=3590) < delete_at - before < timedelta(seconds=3610)
    meta = raw.group_metas.find_one({"_id": group})
    assert set(meta) == {"_id", "task_uuids", "chord_triggered", "lock", "created_at", "delete_at"}
    assert (meta["task_uuids"], meta["chord_triggered"], meta["lock"]) == ([uuid], False, False)
    zero.close()


def test_results_that_never_expire_have_no_delete_at(backend: MongoBackend, raw: Any) -> None:
    """results_expire_in = -1: no ``delete_at`` (the TTL index never removes them), also removed from
    a state and a group that had one."""
    uuid, group, other = new_uuid(), new_uuid("group"), new_uuid("group")
    backend.set_state(TaskState(uuid, State.STARTED, "add"))
    backend.init_group(group, [uuid])
    never = MongoBackend.from_url(mongodb_url(), config_with(results_expire_in=NEVER_EXPIRE))
    try:
        never.set_state(TaskState(uuid, State.SUCCESS, results=[Arg(1, "int64")]))
        never.init_group(other, [uuid])
        assert [s.state for s in never.group_states(group)] == [State.SUCCESS]
        assert "delete_at" not in raw.tasks.find_one({"_id": uuid})
        assert "delete_at" not in raw.group_metas.find_one({"_id": group})
        assert "delete_at" not in raw.group_metas.find_one({"_id": other})
        assert never.trigger_chord(other) and not never.trigger_chord(other)
    finally:
        never.close()


def test_values_bson_cannot_hold_go_as_json_text(backend: MongoBackend, raw: Any) -> None:
    # beyond int64, and keys MongoDB gives a meaning to
    for value, type_ in [(2**64 - 1, "uint64"), (2**100, "json"), ({"$set": 1, "a.b": 2}, "json")]:
        uuid = new_uuid()
        backend.set_state(TaskState(uuid, State.SUCCESS, "t", results=codec.results_from_return(value)))
        stored = raw.tasks.find_one({"_id": uuid})["results"][0]
        assert stored["type"] == type_ and "value" not in stored and "json" in stored
        got = backend.get_state(uuid)
        assert got is not None and got.values == [value]


def test_ttl_indexes_are_created(backend: MongoBackend, raw: Any) -> None:
    backend.set_state(TaskState(new_uuid(), State.PENDING, "t"))
    backend.init_group(new_uuid("group"), [])
    lock = MongoLock.from_url(mongodb_url(), Config())
    lock.acquire(new_uuid("lock"), 1)
    for collection, field in (("tasks", "delete_at"), ("group_metas", "delete_at"), ("locks", "expires_at")):
        ttl = [i for i in raw[collection].list_indexes() if "expireAfterSeconds" in i]
        assert [(dict(i["key"]), i["expireAfterSeconds"]) for i in ttl] == [({field: 1}, 0)], collection
    lock.close()


def test_expiry_really_removes_the_documents(raw: Any) -> None:
    """Not just hidden by reads: the TTL index deletes states, groups and locks on the server."""
    config = config_with(results_expire_in=1)
    backend, lock = MongoBackend.from_url(mongodb_url(), config), MongoLock.from_url(mongodb_url(), config)
    uuid, group, key = new_uuid(), new_uuid("group"), new_uuid("lock")
    backend.set_state(TaskState(uuid, State.SUCCESS, "t", results=[Arg(1, "int64")]))
    backend.init_group(group, [uuid])
    assert lock.acquire(key, 1)
    started = datetime.now(UTC)

    def all_deleted() -> bool:
        return (
            raw.tasks.count_documents({"_id": uuid}) == 0
            and raw.group_metas.count_documents({"_id": group}) == 0
            and raw.locks.count_documents({"_id": key}) == 0
        )

    eventually(all_deleted, 10, "the TTL sweep to delete the state, the group and the lock")
    assert datetime.now(UTC) - started >= timedelta(seconds=0.9), "deleted before its expiry"
    backend.close()
    lock.close()


def test_expired_results_are_gone_before_the_sweep(raw: Any) -> None:
    """MongoDB sweeps once a minute: reads already treat a passed ``delete_at`` as gone."""
    database = f"{TEST_DB}_nosweep"
    backend = MongoBackend.from_url(mongodb_url(database=database), Config())
    uuid, group = new_uuid(), new_uuid("group")
    backend.set_state(TaskState(uuid, State.SUCCESS, "t"))
    backend.init_group(group, [uuid])
    store = raw.client[database]
    for collection in (store.tasks, store.group_metas):
        collection.drop_index("delete_at_ttl")  # no sweep in this database
        collection.update_many({}, {"$set": {"delete_at": datetime.now(UTC) - timedelta(seconds=1)}})
    assert store.tasks.count_documents({"_id": uuid}) == 1, "the document is still on the server"
    assert backend.get_state(uuid) is None
    assert backend.wait([uuid], 0.1) == {}
    with pytest.raises(UnknownGroupError):
        backend.group_states(group)
    with pytest.raises(UnknownGroupError):
        backend.trigger_chord(group)
    backend.close()
    raw.client.drop_database(database)


def test_group_order_is_kept_for_large_groups(backend: MongoBackend) -> None:
    group = new_uuid("group")
    members = [new_uuid() for _ in range(100)]
    backend.init_group(group, members)
    backend.set_states(
        [TaskState(u, State.SUCCESS, "t", results=[Arg(i, "int64")]) for i, u in enumerate(members)][::-1]
    )
    states = backend.group_states(group)
    assert [s.task_uuid for s in states] == members
    assert [s.values for s in states] == [[i] for i in range(100)]
    some = backend.get_states([members[5], new_uuid(), members[0]])
    assert [s.values if s else None for s in some] == [[5], None, [0]]


def test_records_written_by_go_machinery_are_read(backend: MongoBackend, raw: Any) -> None:
    """Go v2 writes int64 results as BSON int64, no delete_at on groups, created_at as a date."""
    uuid, group = new_uuid(), new_uuid("group")
    created = datetime(2025, 11, 15, 12, 7, 2, 123000, tzinfo=UTC)
    raw.tasks.insert_one(
        {
            "_id": uuid,
            "state": "SUCCESS",
            "task_name": "add",
            "created_at": created,
            "results": [{"type": "int64", "value": Int64(2)}, {"type": "[]int64", "value": [Int64(5)]}],
        }
    )
    raw.group_metas.insert_one(
        {"_id": group, "task_uuids": [uuid], "chord_triggered": False, "lock": False, "created_at": created}
    )
    got = backend.get_state(uuid)
    assert got is not None and got.values == [2, [5]] and type(got.values[0]) is int
    assert got.created_at == created and got.task_name == "add"
    assert [s.state for s in backend.group_states(group)] == [State.SUCCESS]
    assert [backend.trigger_chord(group), backend.trigger_chord(group)] == [True, False]


def test_a_state_over_16_mib_raises_a_clear_error_and_loses_nothing(backend: MongoBackend) -> None:
    uuid, small = new_uuid(), new_uuid()
    backend.set_state(TaskState(uuid, State.STARTED, "big_task"))
    huge = TaskState(uuid, State.SUCCESS, "big_task", results=[Arg("x" * (17 * 2**20), "string")])
    with pytest.raises(ResultTooLargeError) as info:
        backend.set_states([TaskState(small, State.SUCCESS, "t"), huge])
    message = str(info.value)
    assert uuid in message and "big_task" in message and "16 MiB" in message and "17.0 MiB" in message
    assert info.value.task_uuids == [uuid], "only the oversized state is named"
    assert not isinstance(info.value, BackendError), "BackendError means transient: it would be retried"
    still = backend.get_state(uuid)
    assert still is not None and still.state == State.STARTED, "the previous state is kept"
    backend.set_state(TaskState(small, State.SUCCESS, "t"))  # the connection is still usable
    assert backend.get_state(small) is not None


def test_a_state_just_over_the_limit_refused_by_the_server_gives_the_same_error(
    backend: MongoBackend,
) -> None:
    """The driver lets a write up to 16 KiB over the limit through (command overhead); the server
    refuses the resulting document (code 17420) and that is reported the same way."""
    uuid = new_uuid()
    state = TaskState(
        uuid, State.SUCCESS, "t", results=[Arg("z" * (2**24 - 200), "string")], error="e" * 2000
    )
    with pytest.raises(ResultTooLargeError) as info:
        backend.set_state(state)
    assert info.value.task_uuids == [uuid] and "16 MiB" in str(info.value)
    assert backend.get_state(uuid) is None


def test_a_state_just_under_the_limit_is_stored(backend: MongoBackend) -> None:
    uuid = new_uuid()
    value = "y" * (16 * 2**20 - 4096)
    backend.set_state(TaskState(uuid, State.SUCCESS, "t", results=[Arg(value, "string")]))
    got = backend.get_state(uuid)
    assert got is not None and got.values == [value]
    backend.purge_state(uuid)


def _bad_credentials_url() -> str:
    return mongodb_url("authSource=admin").replace("mongodb://", f"mongodb://nobody:{SECRET}@", 1)


def test_wrong_credentials_give_a_clear_error_without_the_password() -> None:
    """SecantusDB does not require authentication, but it checks any credentials a client sends."""
    for obj in (
        MongoBackend.from_url(_bad_credentials_url(), Config()),
        MongoLock.from_url(_bad_credentials_url(), Config()),
    ):
        with pytest.raises(BackendError) as info:
            if isinstance(obj, MongoBackend):
                obj.get_state(new_uuid())
            else:
                obj.acquire(new_uuid("lock"), 1)
        message = str(info.value)
        assert "authentication failed" in message and "authSource" in message
        assert "127.0.0.1" in message and SECRET not in message and "nobody" not in message
        obj.close()


def _tls_url(port: int, query: str) -> str:
    return f"mongodb://127.0.0.1:{port}/{TEST_DB}?tls=true&serverSelectionTimeoutMS=1000&{query}"


def test_tls_is_verified_by_default(tls_port: int) -> None:
    untrusted = MongoBackend.from_url(_tls_url(tls_port, "appName=untrusted"), Config())
    with pytest.raises(BackendError, match="certificate verify failed"):
        untrusted.get_state(new_uuid())
    untrusted.close()


def test_tls_with_the_ca_from_the_url_or_the_config(tls_port: int) -> None:
    ca = require_env("REDIS_TLS_CA", "redis-tls")
    from_url = MongoBackend.from_url(_tls_url(tls_port, f"tlsCAFile={ca}"), Config())
    config = Config()
    config.tls.ca_file = ca
    from_config = MongoBackend.from_url(_tls_url(tls_port, "appName=config-ca"), config)
    uuid = new_uuid()
    from_url.set_state(TaskState(uuid, State.SUCCESS, "t", results=[Arg(1, "int64")]))
    got = from_config.get_state(uuid)
    assert got is not None and got.values == [1]
    from_url.close()
    from_config.close()


def test_plain_connection_to_a_tls_server_fails_clearly(tls_port: int) -> None:
    plain = MongoBackend.from_url(f"mongodb://127.0.0.1:{tls_port}/x?serverSelectionTimeoutMS=1000", Config())
    with pytest.raises(BackendError, match=f"127.0.0.1:{tls_port}"):
        plain.get_state(new_uuid())
    plain.close()


def test_a_client_from_the_config_is_used_and_left_open() -> None:
    """Go's ``MongoDBConfig.Client``: the application's own client, never closed by the plugin."""
    from pymongo import MongoClient

    client: MongoClient[dict[str, Any]] = MongoClient(mongodb_url(), serverSelectionTimeoutMS=3000)
    config = Config()
    config.mongodb.client = client
    backend = MongoBackend.from_url("mongodb://unused.invalid/" + TEST_DB, config)
    uuid = new_uuid()
    backend.set_state(TaskState(uuid, State.SUCCESS, "t"))
    backend.close()
    assert client[TEST_DB].tasks.find_one({"_id": uuid}) is not None, "the given client was closed"
    client.close()


def test_a_worker_ends_a_task_with_a_too_large_result_failure_and_goes_on() -> None:
    """Through a real worker: the oversized SUCCESS becomes that task's FAILURE with the clear error
    (the worker's permanent-error handling, issue 16), and the next task runs."""
    statewriter = pytest.importorskip("machinery.worker.statewriter")
    if not hasattr(statewriter, "is_permanent"):
        pytest.skip("the worker on this core retries every store error (worker hardening, issue 16)")
    from machinery import Machinery
    from machinery.errors import TaskError

    config = Config(broker=redis_url(), result_backend=mongodb_url(), default_queue=new_uuid("q"))
    config.no_unix_signals = True
    app = Machinery(config)

    @app.task
    def big() -> str:
        return "x" * (17 * 2**20)

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    worker = app.worker("big", concurrency=2)
    thread = worker.launch_async()
    try:
        with pytest.raises(TaskError, match=r"big.*17\.0 MiB.*16 MiB"):
            app.send_task(big.s()).get(timeout=30)
        assert app.send_task(add.s(1, 1)).get(timeout=10) == 2
    finally:
        worker.quit()
        thread.join(20)
        app.close()
