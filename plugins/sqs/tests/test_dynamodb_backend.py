"""The DynamoDB backend on moto: Machinery's item layout, the TTL attribute (moto deletes nothing, so the
attribute is checked), the item size limit, missing tables, Go-written items, and a wait that does not
hammer the table."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqs_testlib import dynamodb_url

from machinery import Config, Machinery, codec
from machinery.errors import BackendError
from machinery.signature import Arg, State, TaskState, new_uuid
from machinery_sqs import DynamoDBBackend, DynamoDBLock

pytestmark = pytest.mark.services


def raw_item(backend: DynamoDBBackend, table: str, key: str, value: str) -> dict[str, Any]:
    item: dict[str, Any] = backend.client.get_item(TableName=table, Key={key: {"S": value}})["Item"]
    return item


def test_machinery_layout_and_ttl(config: Config) -> None:
    config.results_expire_in = 600
    backend = DynamoDBBackend.from_url(dynamodb_url(), config)
    uuid = new_uuid()
    backend.set_state(TaskState(uuid, State.PENDING, "add"))
    backend.set_state(TaskState(uuid, State.SUCCESS, results=codec.results_from_return(("hi", 3, [1, 2]))))
    item = raw_item(backend, backend.states_table, "TaskUUID", uuid)
    assert item["State"] == {"S": "SUCCESS"} and item["TaskName"] == {"S": "add"}
    values = [(r["M"]["Type"]["S"], r["M"]["Value"]["S"]) for r in item["Results"]["L"]]
    assert values == [("string", "hi"), ("int64", "3"), ("[]int64", "[1,2]")], "Go reads strings and numbers"
    ttl = int(item["TTL"]["N"])
    assert 599 <= ttl - time.time() <= 601, (
        f"TTL must be results_expire_in from now, got {ttl - time.time():.0f}"
    )
    described = backend.client.describe_time_to_live(TableName=backend.states_table)
    assert described["TimeToLiveDescription"]["AttributeName"] == "TTL"
    assert described["TimeToLiveDescription"]["TimeToLiveStatus"] in ("ENABLED", "ENABLING")
    backend.close()


def test_group_members_in_order(backend: DynamoDBBackend) -> None:
    group, members = new_uuid("group"), [new_uuid() for _ in range(5)]
    backend.init_group(group, members)
    item = raw_item(backend, backend.groups_table, "GroupUUID", group)
    assert [m["S"] for m in item["TaskUUIDs"]["L"]] == members
    assert item["ChordTriggered"] == {"BOOL": False}
    assert [s.task_uuid for s in backend.group_states(group)] == members


def test_result_over_item_limit_becomes_failure(backend: DynamoDBBackend) -> None:
    uuid = new_uuid()
    backend.set_state(TaskState(uuid, State.PENDING, "big"))
    backend.set_state(TaskState(uuid, State.SUCCESS, results=[Arg("x" * 450_000, "string")]))
    state = backend.get_state(uuid)
    assert state is not None and state.state == State.FAILURE
    assert "400" in state.error and "item limit" in state.error, state.error
    assert state.task_name == "big"


def test_huge_error_text_is_truncated_not_lost(backend: DynamoDBBackend) -> None:
    uuid = new_uuid()
    backend.set_state(TaskState(uuid, State.FAILURE, "boom", error="e" * 500_000))
    state = backend.get_state(uuid)
    assert state is not None and state.state == State.FAILURE
    assert state.error.startswith("eeee") and "truncated" in state.error


def test_go_written_item_is_read(backend: DynamoDBBackend) -> None:
    """Go Machinery writes every result value as text (``fmt.Sprintf("%v")``)."""
    uuid = new_uuid()
    results = [("int64", "42"), ("string", "hello"), ("bool", "true"), ("[]int64", "[1 2 3]")]
    backend.client.put_item(
        TableName=backend.states_table,
        Item={
            "TaskUUID": {"S": uuid},
            "TaskName": {"S": "go_task"},
            "State": {"S": "SUCCESS"},
            "Results": {"L": [{"M": {"Type": {"S": t}, "Value": {"S": v}}} for t, v in results]},
            "Error": {"S": ""},
            "CreatedAt": {"S": "2025-11-15T12:07:02.1234567Z"},
            "TTL": {"N": str(int(time.time()) + 600)},
        },
    )
    state = backend.get_state(uuid)
    assert state is not None and state.task_name == "go_task"
    assert state.values[:3] == [42, "hello", True]
    assert state.values[3] == "[1 2 3]", "a value the codec cannot read stays as Go wrote it"


def test_missing_table_without_create_missing(config: Config) -> None:
    table = f"missing_{new_uuid()[-8:]}"
    backend = DynamoDBBackend.from_url(
        f"{dynamodb_url()}?task_states_table={table}&create_missing=false", config
    )
    with pytest.raises(BackendError, match=f"{table}.*does not exist.*create_missing"):
        backend.get_state(new_uuid())
    backend.close()


def test_wait_backs_off(backend: DynamoDBBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """A waiter polls 50 ms apart at first and slows to 0.5 s: about 9 reads in 2 s, not 40."""
    reads = 0
    client = backend.client
    batch_get = client.batch_get_item

    def counting(**kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return batch_get(**kwargs)

    monkeypatch.setattr(client, "batch_get_item", counting)
    started = time.monotonic()
    assert backend.wait([new_uuid()], 2.0) == {}
    assert 1.9 <= time.monotonic() - started < 3.0
    assert 5 <= reads <= 12, f"{reads} reads in 2 s"
    done = new_uuid()
    backend.set_state(TaskState(done, State.SUCCESS, "t"))
    reads = 0
    assert set(backend.wait([done], 2.0)) == {done}
    assert reads == 1


def test_table_deleted_behind_its_back_is_created_again(config: Config) -> None:
    table = f"states_{new_uuid()[-8:]}"
    backend = DynamoDBBackend.from_url(f"{dynamodb_url()}?task_states_table={table}", config)
    first, second = new_uuid(), new_uuid()
    backend.set_state(TaskState(first, State.PENDING, "t"))
    backend.client.delete_table(TableName=table)
    backend.set_state(TaskState(second, State.PENDING, "t"))
    assert backend.get_state(first) is None, "the first state went with the deleted table"
    got = backend.get_state(second)
    assert got is not None and got.task_name == "t"
    backend.client.delete_table(TableName=table)
    backend.close()


def test_set_states_in_parallel_keeps_each_tasks_order(backend: DynamoDBBackend) -> None:
    tasks = [new_uuid() for _ in range(6)]
    backend.set_states([TaskState(u, State.PENDING, "t") for u in tasks])
    batch = [TaskState(u, s) for s in (State.RECEIVED, State.STARTED) for u in tasks]
    batch += [TaskState(u, State.SUCCESS, results=[Arg(i, "int64")]) for i, u in enumerate(tasks)]
    backend.set_states(batch)
    states = [backend.get_state(u) for u in tasks]
    assert [(s.state, s.values, s.task_name) for s in states if s] == [
        (State.SUCCESS, [i], "t") for i in range(6)
    ], "a task's later state was overwritten by an earlier one of the same batch"


def test_the_app_takes_its_shared_lock_from_the_dynamodb_url(config: Config) -> None:
    """With a DynamoDB result backend, periodic tasks and chord recovery lock in DynamoDB, not in one
    process: the lock is shared by every worker on every host."""
    config.broker, config.result_backend = "memory://", dynamodb_url()
    app = Machinery(config)
    try:
        assert isinstance(app.lock, DynamoDBLock) and not app.lock_is_fallback
    finally:
        app.close()


def test_lock_item_layout_and_ttl(config: Config) -> None:
    config.dynamodb.locks_table = f"locks_{new_uuid()[:8]}"  # a table created on first use
    lock = DynamoDBLock.from_url(dynamodb_url(), config)
    key = f"k-{new_uuid()}"
    try:
        assert lock.acquire(key, 30)
        item = lock._tables.client.get_item(
            TableName=config.dynamodb.locks_table, Key={"LockKey": {"S": key}}
        )
        item = item["Item"]
        assert item["Owner"] == {"S": lock.token}
        assert 29 <= float(item["ExpiresAt"]["N"]) - time.time() <= 31
        assert int(item["TTL"]["N"]) > float(item["ExpiresAt"]["N"]), "DynamoDB never sweeps a held lock"
        lock.release(key)
        gone = lock._tables.client.get_item(
            TableName=config.dynamodb.locks_table, Key={"LockKey": {"S": key}}
        )
        assert "Item" not in gone
    finally:
        lock.close()


def test_lock_error_names_the_table_not_a_secret(config: Config) -> None:
    config.dynamodb.create_missing = False
    config.dynamodb.locks_table = f"missing_{new_uuid()[:8]}"
    lock = DynamoDBLock.from_url(dynamodb_url(), config)
    with pytest.raises(BackendError, match="does not exist .* create_missing is off") as caught:
        lock.acquire("k", 1)
    assert config.dynamodb.locks_table in str(caught.value)
    lock.close()
