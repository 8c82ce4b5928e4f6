"""Tests of machinery.codec: Go Machinery's JSON wire format.

The golden files in ``golden/`` were written by hand from the reference's wire-format section (what
Go's ``encoding/json`` produces for ``tasks.Signature``, ``TaskState`` and ``GroupMeta``).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from machinery import codec
from machinery.codec import (
    ArgumentError,
    decode_group_meta,
    decode_signature,
    decode_state,
    decode_value,
    encode_group_meta,
    encode_signature,
    encode_state,
    encode_value,
    format_time,
    group_meta_from_dict,
    group_meta_to_dict,
    infer_type,
    parse_time,
    results_from_return,
    signature_from_dict,
    signature_to_dict,
    state_from_dict,
    state_to_dict,
    values_from_results,
)
from machinery.errors import MessageError
from machinery.signature import Arg, GroupMeta, Signature, State, TaskState

GOLDEN = Path(__file__).parent / "golden"
UUID = "task_0b9f4c3e-5f8a-4b0e-9d1c-2a7e6f3b8c91"

try:
    _ORJSON: Any = importlib.import_module("orjson")
except ImportError:
    _ORJSON = None


@pytest.fixture(autouse=True, params=["stdlib"] if _ORJSON is None else ["stdlib", "orjson"])
def json_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run every test with the stdlib JSON layer and, when orjson is installed, with orjson too."""
    if request.param == "orjson":
        monkeypatch.setattr(codec, "_orjson", _ORJSON)
        monkeypatch.setattr(
            codec, "_ORJSON_OPTS", _ORJSON.OPT_PASSTHROUGH_DATETIME | _ORJSON.OPT_PASSTHROUGH_DATACLASS
        )
    else:
        monkeypatch.setattr(codec, "_orjson", None)
    yield request.param


def golden_bytes(name: str) -> bytes:
    return (GOLDEN / name).read_bytes()


def golden(name: str) -> Any:
    return json.loads(golden_bytes(name))


def as_go_bytes(obj: Any) -> bytes:
    """What Go's encoding/json writes for ``obj`` (compact, key order kept), for ASCII content."""
    return json.dumps(obj, separators=(",", ":")).encode()


def keys_in_order(obj: Any) -> Any:
    """The key order of every object in ``obj``, recursively, to compare layouts."""
    if isinstance(obj, dict):
        return [(k, keys_in_order(v)) for k, v in obj.items()]
    if isinstance(obj, list):
        return [keys_in_order(v) for v in obj]
    return None


# ---------------------------------------------------------------------------------------------------
# Golden task messages


def test_golden_add_message_decodes() -> None:
    sig = decode_signature(golden_bytes("add_message.json"))
    assert sig.uuid == UUID
    assert sig.name == "add"
    assert sig.routing_key == "machinery_tasks"
    assert sig.eta is None
    assert sig.args == [Arg(1, "int64"), Arg(1, "int64")]
    assert sig.arg_values == [1, 1]
    assert sig.kwargs == {}
    assert sig.headers == {}
    assert (sig.group_uuid, sig.group_task_count, sig.priority) == ("", 0, 0)
    assert (sig.immutable, sig.retry_count, sig.retry_timeout) == (False, 0, 0)
    assert sig.on_success == [] and sig.on_error == [] and sig.chord_callback is None
    assert not sig.stop_task_deletion_on_error and not sig.ignore_when_task_not_registered


def test_golden_add_message_encodes_byte_for_byte() -> None:
    sig = Signature(name="add", args=[1, 1], uuid=UUID, routing_key="machinery_tasks")
    data = encode_signature(sig)
    assert data == golden_bytes("add_message.json").strip()
    assert json.loads(data) == golden("add_message.json")


def test_golden_add_message_round_trips() -> None:
    raw = golden_bytes("add_message.json").strip()
    assert encode_signature(decode_signature(raw)) == raw


def test_signature_keys_in_go_order() -> None:
    d = signature_to_dict(Signature(name="x"))
    assert list(d) == [
        "UUID",
        "Name",
        "RoutingKey",
        "ETA",
        "GroupUUID",
        "GroupTaskCount",
        "Args",
        "Headers",
        "Priority",
        "Immutable",
        "RetryCount",
        "RetryTimeout",
        "OnSuccess",
        "OnError",
        "ChordCallback",
        "BrokerMessageGroupId",
        "SQSReceiptHandle",
        "StopTaskDeletionOnError",
        "IgnoreWhenTaskNotRegistered",
    ]
    assert d["OnSuccess"] is None and d["OnError"] is None and d["ChordCallback"] is None
    assert d["ETA"] is None and d["Headers"] == {} and d["Args"] == []


def test_golden_chain_decodes() -> None:
    sig = decode_signature(golden_bytes("chain_message.json"))
    assert sig.arg_values == [1, 1]
    (second,) = sig.on_success
    assert second.uuid == "task_22222222-2222-4222-8222-222222222222"
    assert second.arg_values == [5, 5]
    assert second.headers == {}  # Go's "Headers":null
    assert second.routing_key == ""
    (third,) = second.on_success
    assert third.name == "multiply" and third.arg_values == [4]
    assert third.on_success == []


def test_golden_chain_encodes_like_go() -> None:
    add3 = Signature(name="multiply", args=[4], uuid="task_33333333-3333-4333-8333-333333333333")
    add2 = Signature(
        name="add", args=[5, 5], uuid="task_22222222-2222-4222-8222-222222222222", on_success=[add3]
    )
    head = Signature(
        name="add",
        args=[1, 1],
        uuid="task_11111111-1111-4111-8111-111111111111",
        routing_key="machinery_tasks",
        on_success=[add2],
    )
    expected = golden("chain_message.json")
    # The one deliberate difference: unsent nested signatures have Headers {} here, null in Go.
    expected["OnSuccess"][0]["Headers"] = {}
    expected["OnSuccess"][0]["OnSuccess"][0]["Headers"] = {}
    data = encode_signature(head)
    assert json.loads(data) == expected
    assert keys_in_order(json.loads(data)) == keys_in_order(expected)
    assert data == as_go_bytes(expected)


def test_golden_chord_member() -> None:
    sig = decode_signature(golden_bytes("chord_member.json"))
    assert sig.eta == datetime(2025, 11, 15, 12, 7, 2, 123456, tzinfo=UTC)
    assert sig.group_uuid == "group_55555555-5555-4555-8555-555555555555"
    assert sig.group_task_count == 3
    assert sig.retry_count == 3
    assert sig.headers == {"uber-trace-id": "5b1f:5b1f:0:1"}
    assert sig.chord_callback is not None
    assert sig.chord_callback.uuid == "chord_66666666-6666-4666-8666-666666666666"
    assert sig.chord_callback.args == []  # "Args": null
    out = json.loads(encode_signature(sig))
    assert out["ETA"] == "2025-11-15T12:07:02.123456Z"  # nanoseconds truncated to microseconds
    assert out["ChordCallback"]["UUID"] == sig.chord_callback.uuid
    assert out["ChordCallback"]["Args"] == []
    assert list(out["ChordCallback"]) == list(golden("chord_member.json")["ChordCallback"])


def test_every_go_arg_type_decodes() -> None:
    sig = decode_signature(golden_bytes("all_go_types.json"))
    got = {(i, a.type): a.value for i, a in enumerate(sig.args)}
    assert list(got.values()) == [
        True,
        -(2**63),
        -128,
        32767,
        -(2**31),
        2**63 - 1,
        2**64 - 1,
        255,
        65535,
        2**32 - 1,
        2**64 - 1,
        1.5,
        3.141592653589793,
        2.0,
        "héllo, 世界",
        [True, False],
        [1, -2],
        [127],
        [-1],
        [7],
        [],
        [0],
        [65535],
        [1],
        [2**64 - 1],
        [1.0, 2.5],
        [0.1],
        ["a", "b"],
        b"hello",
        b"hi",
        [],
    ]
    assert type(sig.args[13].value) is float
    assert all(type(v) is float for v in sig.args[25].value)
    assert sig.args[-1].name == "x"


def test_every_go_arg_type_round_trips() -> None:
    sig = decode_signature(golden_bytes("all_go_types.json"))
    again = decode_signature(encode_signature(sig))
    assert again.args == sig.args
    wire = json.loads(encode_signature(sig))["Args"]
    assert wire[28] == {"Name": "", "Type": "[]uint8", "Value": "aGVsbG8="}
    assert wire[29] == {"Name": "", "Type": "[]byte", "Value": "aGk="}


# ---------------------------------------------------------------------------------------------------
# Golden backend records


def test_golden_success_state() -> None:
    state = decode_state(golden_bytes("state_success.json"))
    assert state.task_uuid == UUID
    assert state.task_name == "add"
    assert state.state is State.SUCCESS
    assert state.results == [Arg(2, "int64")]
    assert values_from_results(state.results) == 2
    assert state.error == ""
    assert state.created_at == datetime(2025, 11, 15, 12, 7, 2, 123456, tzinfo=UTC)
    assert state.ttl == 0


def test_golden_success_state_encodes_like_go() -> None:
    state = TaskState(
        task_uuid=UUID,
        task_name="add",
        state=State.SUCCESS,
        results=results_from_return(2),
        created_at=datetime(2025, 11, 15, 12, 7, 2, 123456, tzinfo=UTC),
    )
    expected = golden("state_success.json")
    expected["CreatedAt"] = "2025-11-15T12:07:02.123456Z"  # Python has microseconds only
    data = encode_state(state)
    assert data == as_go_bytes(expected)
    assert list(json.loads(data)) == ["TaskUUID", "TaskName", "State", "Results", "Error", "CreatedAt", "TTL"]


def test_golden_failure_state_round_trips_exactly() -> None:
    raw = golden_bytes("state_failure.json").strip()
    state = decode_state(raw)
    assert state.state is State.FAILURE and state.is_failure
    assert state.results is None
    assert values_from_results(state.results) is None
    assert state.error == "division by zero"
    assert state.created_at == datetime(2025, 11, 15, 12, 7, 2, tzinfo=UTC)
    assert encode_state(state) == raw


def test_golden_zero_time_state() -> None:
    raw = golden_bytes("state_started_zero_time.json").strip()
    state = decode_state(raw)
    assert state.state is State.STARTED
    assert state.created_at is None
    assert encode_state(state) == raw


def test_golden_group_meta() -> None:
    raw = golden_bytes("group_meta.json").strip()
    meta = decode_group_meta(raw)
    assert meta.group_uuid == "group_55555555-5555-4555-8555-555555555555"
    assert meta.task_uuids == ["task_a", "task_b", "task_c"]
    assert meta.chord_triggered is False and meta.lock is False
    assert meta.created_at == datetime(2025, 11, 15, 12, 7, 2, 500000, tzinfo=UTC)
    assert encode_group_meta(meta) == raw
    assert group_meta_from_dict(group_meta_to_dict(meta)) == meta


def test_group_meta_defaults_and_nulls() -> None:
    meta = decode_group_meta(b'{"GroupUUID":"g","TaskUUIDs":null,"ChordTriggered":true,"lock":true,"TTL":5}')
    assert meta == GroupMeta(group_uuid="g", task_uuids=[], chord_triggered=True, lock=True, ttl=5)
    out = json.loads(encode_group_meta(GroupMeta(group_uuid="g")))
    assert out == {
        "GroupUUID": "g",
        "TaskUUIDs": [],
        "ChordTriggered": False,
        "Lock": False,
        "CreatedAt": "0001-01-01T00:00:00Z",
        "TTL": 0,
    }


@pytest.mark.parametrize("state", list(State))
def test_every_state_round_trips(state: State) -> None:
    record = TaskState(task_uuid="t", state=state, task_name="n", ttl=1763208422)
    assert decode_state(encode_state(record)) == record
    assert state_from_dict(state_to_dict(record)) == record


# ---------------------------------------------------------------------------------------------------
# Python extras: kwargs, "json" args, big ints


def test_kwargs_travel_in_an_extra_key() -> None:
    sig = Signature(name="greet", args=["bob"], kwargs={"greeting": "hi", "times": 2, "opts": {"a": [1]}})
    d = json.loads(encode_signature(sig))
    assert list(d)[-1] == "Kwargs"
    assert d["Kwargs"] == {"greeting": "hi", "times": 2, "opts": {"a": [1]}}
    assert decode_signature(encode_signature(sig)).kwargs == sig.kwargs
    assert "Kwargs" not in signature_to_dict(Signature(name="greet"))
    # "Kwargs" must not case-fold to a Go field, or a Go worker would try to decode it.
    go_fields = {k.lower() for k in signature_to_dict(Signature(name="x"))}
    assert "kwargs" not in go_fields


def test_python_only_args_use_the_json_type() -> None:
    values: list[Any] = [{"a": 1, "b": [1, 2]}, None, [[1, 2], [3]], [1, "a"], [1, 2.5], [], 2**100, -(2**64)]
    sig = Signature(name="f", args=values)
    wire = json.loads(encode_signature(sig))["Args"]
    assert [a["Type"] for a in wire] == ["json"] * len(values)
    back = decode_signature(encode_signature(sig))
    assert back.arg_values == values
    assert [a.type for a in back.args] == ["json"] * len(values)


def test_big_ints_never_go_through_float() -> None:
    big = 2**100
    sig = Signature(name="f", args=[big, [big, 1], 2**64 - 1, -(2**63)], kwargs={"n": -(3**70)})
    back = decode_signature(encode_signature(sig))
    assert back.arg_values == [big, [big, 1], 2**64 - 1, -(2**63)]
    assert [a.type for a in back.args] == ["json", "json", "uint64", "int64"]
    assert back.kwargs == {"n": -(3**70)}
    assert type(back.kwargs["n"]) is int
    state = TaskState(task_uuid="t", state=State.SUCCESS, results=results_from_return(big))
    assert values_from_results(decode_state(encode_state(state)).results) == big
    # A float literal of the same size stays a float.
    assert decode_value("json", codec._loads(b"[1e30, 12345678901234567890123]")) == [
        1e30,
        12345678901234567890123,
    ]


def test_unicode_round_trips_as_utf8() -> None:
    text = 'héllo 世界 🎉 \u2028 "quoted" \\ <tag>&'
    sig = Signature(name="echo", args=[text], kwargs={"ключ": text}, headers={"k": text})
    data = encode_signature(sig)
    assert "世界".encode() in data  # raw UTF-8, like Go
    back = decode_signature(data)
    assert back.arg_values == [text] and back.kwargs == {"ключ": text} and back.headers == {"k": text}
    assert decode_signature(data.decode()).arg_values == [text]  # str input works too


def test_invalid_utf8_is_replaced_like_go() -> None:
    data = b'{"Name":"echo","Args":[{"Type":"string","Value":"a\xffb"}]}'
    assert decode_signature(data).arg_values == ["a\ufffdb"]


def test_full_signature_round_trip() -> None:
    callback = Signature(name="sum", uuid="chord_1", immutable=True)
    err = Signature(name="log_error", args=[Arg("x", name="label")])
    sig = Signature(
        name="work",
        uuid="task_1",
        routing_key="q",
        eta=datetime(2030, 1, 2, 3, 4, 5, 600000, tzinfo=UTC),
        group_uuid="group_1",
        group_task_count=2,
        args=[True, 1.25, b"\x00\xff", ["a", "b"], [True], [1.5, 2.5], {"k": "v"}, Arg(7, "uint8")],
        kwargs={"flag": False},
        headers={"traceparent": "00-abc-def-01"},
        priority=9,
        immutable=True,
        retry_count=4,
        retry_timeout=5,
        on_success=[Signature(name="next", args=[1], on_success=[Signature(name="last")])],
        on_error=[err],
        chord_callback=callback,
        broker_message_group_id="mg",
        sqs_receipt_handle="rh",
        stop_task_deletion_on_error=True,
        ignore_when_task_not_registered=True,
    )
    back = decode_signature(encode_signature(sig))
    assert encode_signature(back) == encode_signature(sig)
    # Decoded args carry the types that were inferred when encoding; otherwise nothing changes.
    typed = sig.copy()
    for s in (typed, *typed.on_success, typed.on_success[0].on_success[0], *typed.on_error):
        s.args = [Arg(a.value, a.type or infer_type(a.value), a.name) for a in s.args]
    assert back == typed
    assert back.args[-1] == Arg(7, "uint8")
    assert back.on_error[0].args == [Arg("x", "string", "label")]
    wire = json.loads(encode_signature(sig))
    assert [a["Type"] for a in wire["Args"]] == [
        "bool",
        "float64",
        "[]uint8",
        "[]string",
        "[]bool",
        "[]float64",
        "json",
        "uint8",
    ]
    assert wire["ETA"] == "2030-01-02T03:04:05.6Z"
    assert signature_from_dict(signature_to_dict(sig)) == typed


def test_tuple_arg_becomes_a_list() -> None:
    back = decode_signature(encode_signature(Signature(name="f", args=[(1, 2), ("a",)])))
    assert back.args == [Arg([1, 2], "[]int64"), Arg(["a"], "[]string")]


def test_explicit_type_is_kept_and_checked() -> None:
    sig = Signature(
        name="f", args=[Arg(3, "int32"), Arg(2, "float64"), Arg([1, 2], "[]uint8"), Arg(b"x", "[]byte")]
    )
    wire = json.loads(encode_signature(sig))["Args"]
    assert [(a["Type"], a["Value"]) for a in wire] == [
        ("int32", 3),
        ("float64", 2),
        ("[]uint8", [1, 2]),
        ("[]byte", "eA=="),
    ]
    for bad in (Arg("3", "int64"), Arg(300, "uint8"), Arg(True, "int"), Arg(1, "map[string]int")):
        with pytest.raises(MessageError):
            encode_signature(Signature(name="f", args=[bad]))


def test_non_finite_floats_are_refused() -> None:
    for value in (float("nan"), float("inf"), [1.0, float("-inf")], Arg(float("nan"), "float32")):
        with pytest.raises(MessageError, match="not representable"):
            encode_signature(Signature(name="f", args=[value]))


def test_unencodable_values_raise_message_error() -> None:
    with pytest.raises(MessageError, match="cannot encode"):
        encode_signature(Signature(name="f", args=[{"when": datetime(2020, 1, 1)}]))
    with pytest.raises(MessageError, match="cannot encode"):
        encode_signature(Signature(name="f", kwargs={"s": {1, 2}}))
    with pytest.raises(MessageError):
        encode_signature(Signature(name="f", args=["\ud800"]))  # lone surrogate: not UTF-8


# ---------------------------------------------------------------------------------------------------
# infer_type / decode_value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, "bool"),
        (False, "bool"),
        (0, "int64"),
        (-(2**63), "int64"),
        (2**63 - 1, "int64"),
        (2**63, "uint64"),
        (2**64 - 1, "uint64"),
        (2**64, "json"),
        (-(2**63) - 1, "json"),
        (1.5, "float64"),
        ("s", "string"),
        (b"b", "[]uint8"),
        (bytearray(b"b"), "[]uint8"),
        ([True, False], "[]bool"),
        ([1, 2], "[]int64"),
        ([1, 2**63], "[]uint64"),
        ([1, 2**64], "json"),
        ([1.0, 2.0], "[]float64"),
        ([1, 2.0], "json"),
        (["a"], "[]string"),
        ([True, 1], "json"),
        ([], "json"),
        ([[1]], "json"),
        ({"a": 1}, "json"),
        (None, "json"),
        ((1, 2), "[]int64"),
    ],
)
def test_infer_type(value: Any, expected: str) -> None:
    assert infer_type(value) == expected


def test_infer_type_of_subclasses() -> None:
    from enum import IntEnum

    class Color(IntEnum):
        RED = 1

    class Name(str):
        pass

    assert infer_type(Color.RED) == "int64"
    assert infer_type(Name("x")) == "string"


@pytest.mark.parametrize(
    ("type_", "value", "expected"),
    [
        ("bool", False, False),
        ("int8", 127, 127),
        ("uint64", 2**64 - 1, 2**64 - 1),
        ("uint", 0, 0),
        ("float32", 1, 1.0),
        ("float64", 2**70, float(2**70)),
        ("[]float64", None, []),
        ("[]string", None, []),
        ("[]bool", None, []),
        ("[]uint8", None, b""),
        ("[]uint8", "", b""),
        ("[]uint8", "AP8=", b"\x00\xff"),
        ("[]byte", [0, 255], b"\x00\xff"),
        ("json", {"a": [1, None]}, {"a": [1, None]}),
    ],
)
def test_decode_value(type_: str, value: Any, expected: Any) -> None:
    got = decode_value(type_, value)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(
    ("type_", "value", "message"),
    [
        ("bool", 1, "invalid bool value 1: expected true or false, got number 1"),
        ("bool", "true", "expected true or false"),
        ("int64", 1.0, "invalid int64 value 1.0: expected an integer, got number 1.0"),
        ("int", "1", "expected an integer, got string '1'"),
        ("int64", True, "expected an integer, got boolean True"),
        ("int64", None, "expected an integer, got null"),
        ("int8", 128, "128 is out of range [-128, 127]"),
        ("int64", 2**63, "is out of range"),
        ("uint8", -1, "-1 is out of range [0, 255]"),
        ("uint64", 2**64, "is out of range"),
        ("float64", "1.5", "expected a number"),
        ("float64", True, "expected a number"),
        ("float64", 10**400, "too large for a float"),
        ("string", 5, "expected a string"),
        ("string", None, "expected a string, got null"),
        ("[]int64", [1, "2"], "element 1: expected an integer"),
        ("[]int64", {"a": 1}, "expected an array, got an object"),
        ("[]uint16", [70000], "element 0: 70000 is out of range"),
        ("[]uint8", "not base64!", "invalid base64"),
        ("[]uint8", [256], "element 0: 256 is out of range"),
        ("[]uint8", 5, "expected a base64 string or an array of bytes"),
        ("map[string]interface {}", {}, "map[string]interface {} is not one of supported types"),
        ("main.Foo", {}, "main.Foo is not one of supported types"),
        ("", 1, " is not one of supported types"),
    ],
)
def test_decode_value_errors(type_: str, value: Any, message: str) -> None:
    with pytest.raises(MessageError) as info:
        decode_value(type_, value)
    assert message in str(info.value)


def test_decode_value_error_repr_is_short() -> None:
    with pytest.raises(MessageError) as info:
        decode_value("string", list(range(1000)))
    assert len(str(info.value)) < 200


def test_encode_value() -> None:
    assert encode_value("[]uint8", b"\x00\xff") == "AP8="
    assert encode_value("json", {"x": 1}) == {"x": 1}
    assert encode_value("int16", 5) == 5
    with pytest.raises(MessageError):
        encode_value("int16", 2**15)


# ---------------------------------------------------------------------------------------------------
# Results


def test_results_from_return_and_back() -> None:
    assert results_from_return(None) is None
    assert results_from_return(3) == [Arg(3, "int64")]
    assert results_from_return((1, "a", b"z")) == [Arg(1, "int64"), Arg("a", "string"), Arg(b"z", "[]uint8")]
    assert results_from_return([1, 2]) == [Arg([1, 2], "[]int64")]  # a list is one value
    assert results_from_return(()) == []
    assert values_from_results(None) is None
    assert values_from_results([]) is None
    assert values_from_results([Arg(3, "int64")]) == 3
    assert values_from_results([Arg(1, "int64"), Arg("a", "string")]) == (1, "a")


@pytest.mark.parametrize(
    "value", [None, 2, 2.5, "s", b"\x01", (1, "two", [3.0]), {"a": [1]}, [1, 2], 2**80, True]
)
def test_result_values_round_trip_through_state(value: Any) -> None:
    state = TaskState(task_uuid="t", state=State.SUCCESS, results=results_from_return(value))
    back = decode_state(encode_state(state))
    assert values_from_results(back.results) == value


def test_go_struct_result_keeps_its_json_value() -> None:
    data = b'{"TaskUUID":"t","State":"SUCCESS","Results":[{"Type":"main.Foo","Value":{"A":1}}]}'
    state = decode_state(data)
    assert state.results == [Arg({"A": 1}, "main.Foo")]
    assert values_from_results(state.results) == {"A": 1}


def test_results_bytes_on_the_wire() -> None:
    state = TaskState(task_uuid="t", state=State.SUCCESS, results=results_from_return(b"hello"))
    assert json.loads(encode_state(state))["Results"] == [{"Type": "[]uint8", "Value": "aGVsbG8="}]


# ---------------------------------------------------------------------------------------------------
# Times


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-11-15T12:07:02.123456789Z", datetime(2025, 11, 15, 12, 7, 2, 123456, tzinfo=UTC)),
        ("2025-11-15T12:07:02.1234567Z", datetime(2025, 11, 15, 12, 7, 2, 123456, tzinfo=UTC)),
        ("2025-11-15T12:07:02.1Z", datetime(2025, 11, 15, 12, 7, 2, 100000, tzinfo=UTC)),
        ("2025-11-15T12:07:02Z", datetime(2025, 11, 15, 12, 7, 2, tzinfo=UTC)),
        ("2025-11-15T12:07:02+00:00", datetime(2025, 11, 15, 12, 7, 2, tzinfo=UTC)),
        ("2025-11-15T14:07:02.5+02:00", datetime(2025, 11, 15, 12, 7, 2, 500000, tzinfo=UTC)),
        ("2025-11-15T00:30:00-05:30", datetime(2025, 11, 15, 6, 0, 0, tzinfo=UTC)),
        ("2025-11-15t12:07:02z", datetime(2025, 11, 15, 12, 7, 2, tzinfo=UTC)),
        ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
    ],
)
def test_parse_time(text: str, expected: datetime) -> None:
    got = parse_time(text)
    assert got == expected
    assert got.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "2025-11-15",
        "2025-11-15T12:07:02",  # no offset
        "2025-11-15 12:07:02Z",
        "2025-13-15T12:07:02Z",
        "2025-11-15T24:00:00Z",
        "2025-11-15T12:07:60Z",
        "2025-11-15T12:07:02.1234567890Z",  # 10 fractional digits
        "2025-11-15T12:07:02+0200",
        "2025-11-15T12:07:02+24:00",
        "٢٠٢٥-11-15T12:07:02Z",  # non-ASCII digits
        "",
    ],
)
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(MessageError, match="invalid RFC 3339 time"):
        parse_time(text)


@pytest.mark.parametrize(
    ("dt", "expected"),
    [
        (datetime(2025, 11, 15, 12, 7, 2, 123456, tzinfo=UTC), "2025-11-15T12:07:02.123456Z"),
        (datetime(2025, 11, 15, 12, 7, 2, 120000, tzinfo=UTC), "2025-11-15T12:07:02.12Z"),
        (datetime(2025, 11, 15, 12, 7, 2, 1, tzinfo=UTC), "2025-11-15T12:07:02.000001Z"),
        (datetime(2025, 11, 15, 12, 7, 2, tzinfo=UTC), "2025-11-15T12:07:02Z"),
        (datetime(2025, 11, 15, 12, 7, 2), "2025-11-15T12:07:02Z"),  # naive = UTC
        (datetime(2025, 11, 15, 14, 7, 2, tzinfo=timezone(timedelta(hours=2))), "2025-11-15T12:07:02Z"),
        (datetime(1, 1, 1, tzinfo=UTC), "0001-01-01T00:00:00Z"),
    ],
)
def test_format_time(dt: datetime, expected: str) -> None:
    assert format_time(dt) == expected
    assert parse_time(expected) == (dt if dt.tzinfo else dt.replace(tzinfo=UTC))


def test_zero_time_means_none() -> None:
    sig = decode_signature(b'{"Name":"f","ETA":"0001-01-01T00:00:00Z"}')
    assert sig.eta is None
    state = decode_state(b'{"State":"PENDING","CreatedAt":"0001-01-01T00:00:00Z"}')
    assert state.created_at is None
    assert json.loads(encode_state(state))["CreatedAt"] == "0001-01-01T00:00:00Z"


def test_eta_with_offset_is_normalised_to_utc() -> None:
    sig = decode_signature(b'{"Name":"f","ETA":"2025-11-15T14:07:02.000000001+02:00"}')
    assert sig.eta == datetime(2025, 11, 15, 12, 7, 2, tzinfo=UTC)
    assert json.loads(encode_signature(sig))["ETA"] == "2025-11-15T12:07:02Z"


# ---------------------------------------------------------------------------------------------------
# Go's decoding rules: case-insensitive keys, unknown keys, nulls, defaults


def test_keys_match_case_insensitively_and_unknown_keys_are_ignored() -> None:
    data = (
        b'{"uuid":"task_x","NAME":"add","routingkey":"q","args":[{"name":"a","TYPE":"int64","value":1}],'
        b'"retrycount":2,"OnSUCCESS":[{"name":"next"}],"kwargs":{"k":1},"Extra":[1,2],"headers":{"h":"v"}}'
    )
    sig = decode_signature(data)
    assert (sig.uuid, sig.name, sig.routing_key, sig.retry_count) == ("task_x", "add", "q", 2)
    assert sig.args == [Arg(1, "int64", "a")]
    assert sig.on_success[0].name == "next"
    assert sig.kwargs == {"k": 1}
    assert sig.headers == {"h": "v"}


def test_last_duplicate_key_wins_like_go() -> None:
    assert decode_signature(b'{"Name":"a","name":"b"}').name == "b"
    assert decode_signature(b'{"name":"b","Name":"a"}').name == "a"


def test_missing_keys_and_nulls_take_defaults() -> None:
    sig = decode_signature(
        b'{"Name":"f","UUID":null,"Args":null,"Headers":null,"Priority":null,"Immutable":null,'
        b'"OnSuccess":null,"OnError":null,"ChordCallback":null,"ETA":null,"Kwargs":null}'
    )
    assert sig == Signature(name="f")
    assert decode_signature(b'{"Name":"f"}') == Signature(name="f")


def test_minimal_state_defaults() -> None:
    state = decode_state(b'{"State":"PENDING"}')
    assert state == TaskState(task_uuid="", state=State.PENDING)
    state = decode_state(b'{"taskuuid":"t","state":"RETRY","results":[],"ttl":3}')
    assert state == TaskState(task_uuid="t", state=State.RETRY, results=[], ttl=3)


def test_empty_results_encode_as_empty_list() -> None:
    state = TaskState(task_uuid="t", state=State.SUCCESS, results=[])
    assert json.loads(encode_state(state))["Results"] == []


# ---------------------------------------------------------------------------------------------------
# Malformed input


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "invalid JSON"),
        (b"not json", "invalid JSON"),
        (b'{"Name":"f"', "invalid JSON"),
        (b'{"Name":"f"} trailing', "invalid JSON"),
        (b'{"Name":"f","Args":[{"Type":"float64","Value":NaN}]}', "invalid JSON"),
        (b"[1,2]", "task message: expected an object, got an array"),
        (b'"add"', "expected an object, got string"),
        (b"null", "expected an object, got null"),
        (b"{}", "Name is missing"),
        (b'{"Name":null}', "Name is missing"),
        (b'{"Name":5}', "Name is not a task name: number 5"),
        (b'{"Name":""}', "Name is not a task name"),
        (b'{"Name":"f","Args":{"a":1}}', "Args: expected an array, got an object"),
        (b'{"Name":"f","Args":[1]}', "Args[0]: expected an object, got number 1"),
        (b'{"Name":"f","Args":[{"Value":1}]}', "Args[0].Type: expected a type name, got null"),
        (b'{"Name":"f","Args":[{"Type":7,"Value":1}]}', "Args[0].Type: expected a type name"),
        (b'{"Name":"f","Args":[{"Type":"int64","Value":1,"Name":3}]}', "Args[0].Name: expected a string"),
        (b'{"Name":"f","UUID":7}', "UUID: expected a string, got number 7"),
        (b'{"Name":"f","RetryCount":"3"}', "RetryCount: expected an integer, got string '3'"),
        (b'{"Name":"f","RetryCount":1.5}', "RetryCount: expected an integer, got number 1.5"),
        (b'{"Name":"f","GroupTaskCount":false}', "GroupTaskCount: expected an integer, got boolean False"),
        (b'{"Name":"f","Priority":256}', "Priority: 256 is out of range [0, 255]"),
        (b'{"Name":"f","Immutable":0}', "Immutable: expected true or false, got number 0"),
        (b'{"Name":"f","ETA":"tomorrow"}', "ETA: invalid RFC 3339 time 'tomorrow'"),
        (b'{"Name":"f","ETA":5}', "ETA: expected a string"),
        (b'{"Name":"f","Headers":[]}', "Headers: expected an object, got an array"),
        (b'{"Name":"f","Kwargs":[1]}', "Kwargs: expected an object, got an array"),
        (b'{"Name":"f","OnSuccess":{}}', "OnSuccess: expected an array, got an object"),
        (b'{"Name":"f","OnSuccess":[null]}', "OnSuccess[0]: expected an object, got null"),
        (
            b'{"Name":"f","OnSuccess":[{"Name":"g","RetryCount":"x"}]}',
            "OnSuccess[0].RetryCount: expected an integer",
        ),
        (b'{"Name":"f","ChordCallback":{"UUID":"c"}}', "ChordCallback.Name is missing"),
        (b'{"Name":"f","ChordCallback":[]}', "ChordCallback: expected an object, got an array"),
    ],
)
def test_malformed_messages(data: bytes, message: str) -> None:
    with pytest.raises(MessageError) as info:
        decode_signature(data)
    assert message in str(info.value)
    assert not isinstance(info.value, ArgumentError)


def test_bad_argument_values_raise_argument_error_with_the_signature() -> None:
    data = (
        b'{"UUID":"task_1","Name":"f","Args":[{"Type":"int64","Value":1.5},{"Type":"string","Value":"ok"},'
        b'{"Type":"main.Foo","Value":{}}],"OnSuccess":[{"Name":"g","Args":[{"Type":"int8","Value":999}]}]}'
    )
    with pytest.raises(ArgumentError) as info:
        decode_signature(data)
    text = str(info.value)
    assert "Args[0]: invalid int64 value 1.5: expected an integer, got number 1.5" in text
    assert "Args[2]: main.Foo is not one of supported types" in text
    assert "OnSuccess[0].Args[0]: invalid int8 value 999" in text
    sig = info.value.signature
    assert sig.uuid == "task_1" and sig.name == "f"
    assert sig.args[1] == Arg("ok", "string")
    assert sig.args[0] == Arg(1.5, "int64")  # the raw value is kept
    assert isinstance(info.value, MessageError)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{", "invalid JSON"),
        (b"[]", "task state: expected an object, got an array"),
        (b"{}", "State is missing"),
        (b'{"State":"DONE"}', "State is not a task state: string 'DONE'"),
        (b'{"State":1}', "State is not a task state: number 1"),
        (b'{"State":"SUCCESS","TaskUUID":1}', "TaskUUID: expected a string"),
        (b'{"State":"SUCCESS","Results":{}}', "Results: expected an array, got an object"),
        (b'{"State":"SUCCESS","Results":[1]}', "Results[0]: expected an object, got number 1"),
        (
            b'{"State":"SUCCESS","Results":[{"Type":"int64","Value":"2"}]}',
            "Results[0]: invalid int64 value '2'",
        ),
        (b'{"State":"SUCCESS","Results":[{"Type":3,"Value":2}]}', "Results[0].Type: expected a type name"),
        (b'{"State":"SUCCESS","CreatedAt":"yesterday"}', "CreatedAt: invalid RFC 3339 time"),
        (b'{"State":"SUCCESS","TTL":1.5}', "TTL: expected an integer"),
        (b'{"State":"SUCCESS","Error":null,"TaskName":false}', "TaskName: expected a string"),
    ],
)
def test_malformed_states(data: bytes, message: str) -> None:
    with pytest.raises(MessageError) as info:
        decode_state(data)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"nope", "invalid JSON"),
        (b"1", "group record: expected an object, got number 1"),
        (b'{"GroupUUID":1}', "GroupUUID: expected a string"),
        (b'{"TaskUUIDs":"a,b"}', "TaskUUIDs: expected an array, got string"),
        (b'{"TaskUUIDs":["a",2]}', "TaskUUIDs[1]: expected a string, got number 2"),
        (b'{"ChordTriggered":"yes"}', "ChordTriggered: expected true or false"),
        (b'{"Lock":1}', "Lock: expected true or false"),
        (b'{"CreatedAt":"x"}', "CreatedAt: invalid RFC 3339 time"),
    ],
)
def test_malformed_group_meta(data: bytes, message: str) -> None:
    with pytest.raises(MessageError) as info:
        decode_group_meta(data)
    assert message in str(info.value)


def test_from_dict_rejects_non_dicts() -> None:
    for fn in (signature_from_dict, state_from_dict, group_meta_from_dict):
        with pytest.raises(MessageError, match="expected an object"):
            fn(["not", "a", "dict"])


def test_deeply_nested_json_is_a_message_error() -> None:
    data = b'{"Name":"f","Kwargs":{"x":' + b"[" * 100000 + b"]" * 100000 + b"}}"
    with pytest.raises(MessageError):
        decode_signature(data)


def test_memoryview_and_bytearray_input() -> None:
    raw = golden_bytes("add_message.json")
    assert decode_signature(bytearray(raw)).name == "add"
    assert decode_signature(memoryview(raw)).name == "add"


def test_never_pickles() -> None:
    source = Path(codec.__file__).read_text()
    assert "import pickle" not in source and "pickle." not in source


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"priority": 300}, "Signature.priority (Priority): 300 is out of range [0, 255]"),
        ({"priority": -1}, "out of range"),
        ({"name": ""}, "Signature.name must be a non-empty string"),
        ({"immutable": 1}, "Signature.immutable (Immutable): expected true or false"),
        ({"retry_count": "3"}, "Signature.retry_count (RetryCount): expected an integer"),
        ({"retry_timeout": 2**63}, "out of range"),
        ({"uuid": None}, "Signature.uuid (UUID): expected a string"),
        ({"group_task_count": 1.0}, "expected an integer"),
    ],
)
def test_encode_refuses_fields_go_cannot_read(changes: dict[str, Any], message: str) -> None:
    sig = Signature(name="f")
    for attr, value in changes.items():
        setattr(sig, attr, value)
    with pytest.raises(MessageError) as info:
        encode_signature(sig)
    assert message in str(info.value)
    nested = Signature(name="outer", on_success=[sig])
    with pytest.raises(MessageError):
        encode_signature(nested)
