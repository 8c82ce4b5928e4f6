"""The document mapping without a server: what each state write sets, and typed results."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from bson.int64 import Int64

from machinery import codec
from machinery.errors import MessageError
from machinery.signature import Arg, State, TaskState
from machinery_mongodb.documents import fits_bson, state_from_document, state_update

NOW = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)


def test_a_full_state_sets_every_field() -> None:
    state = TaskState("t1", State.PENDING, "add", created_at=NOW - timedelta(seconds=5))
    update = state_update(state, NOW, LATER)
    assert update == {
        "$set": {
            "state": "PENDING",
            "results": None,
            "error": "",
            "delete_at": LATER,
            "task_name": "add",
            "created_at": NOW - timedelta(seconds=5),
        }
    }


def test_a_state_without_name_or_creation_time_keeps_the_stored_ones() -> None:
    update = state_update(TaskState("t1", State.STARTED), NOW, LATER)
    assert "task_name" not in update["$set"] and "created_at" not in update["$set"]
    assert update["$setOnInsert"] == {"task_name": "", "created_at": NOW}


def test_results_are_typed_and_checked_by_the_codec() -> None:
    state = TaskState("t1", State.SUCCESS, results=codec.results_from_return((1, b"\x00\xff", None)))
    assert state_update(state, NOW, LATER)["$set"]["results"] == [
        {"type": "int64", "value": 1},
        {"type": "[]uint8", "value": "AP8="},
        {"type": "json", "value": None},
    ]
    with pytest.raises(MessageError):
        state_update(TaskState("t1", State.SUCCESS, results=[Arg(float("nan"), "float64")]), NOW, LATER)


def test_a_result_that_is_not_json_names_the_task() -> None:
    state = TaskState("t9", State.SUCCESS, results=[Arg({"when": NOW}, "json")])
    with pytest.raises(MessageError, match="t9.*datetime"):
        state_update(state, NOW, LATER)


@pytest.mark.parametrize(
    ("value", "fits"),
    [
        (2**63 - 1, True),
        (2**63, False),
        (-(2**63) - 1, False),
        ({"a": [1, {"b": None}]}, True),
        ({"$where": 1}, False),
        ({"a.b": 1}, False),
        ({"nul\x00": 1}, False),
        ([1, [2**70]], False),
        ("ü🎉", True),
        (b"raw", False),
    ],
)
def test_what_bson_holds_exactly(value: object, fits: bool) -> None:
    assert fits_bson(value) is fits


def test_a_document_back_to_a_state() -> None:
    doc = {
        "_id": "t1",
        "state": "SUCCESS",
        "task_name": "add",
        "created_at": NOW,
        "results": [{"type": "int64", "value": Int64(5)}, {"type": "uint64", "json": "18446744073709551615"}],
        "error": "",
        "delete_at": LATER,
    }
    state = state_from_document(doc)
    assert (state.task_uuid, state.state, state.task_name, state.created_at) == (
        "t1",
        State.SUCCESS,
        "add",
        NOW,
    )
    assert state.values == [5, 2**64 - 1] and type(state.values[0]) is int


@pytest.mark.parametrize(
    "doc",
    [
        {"_id": "t1", "state": "DONE"},
        {"_id": "t1", "state": "SUCCESS", "results": "nope"},
        {"_id": "t1", "state": "SUCCESS", "results": [{"type": "int64", "value": "5"}]},
        {"_id": "t1", "state": "SUCCESS", "results": [{"type": "json", "json": "{not json"}]},
    ],
)
def test_a_broken_document_is_a_message_error(doc: dict[str, object]) -> None:
    with pytest.raises(MessageError):
        state_from_document(doc)
