"""A hypothesis fuzz of the codec's decode functions: they raise only MessageError, and whatever
they accept encodes again (a worker must be able to store what it read, or it wedges)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from machinery import codec
from machinery.errors import MessageError

# Bounded for CI time: ~3 s for the whole module on a loaded 2-core machine.
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_TYPES = [
    "bool", "int", "int8", "uint8", "int64", "uint64", "float32", "float64", "string",
    "[]int64", "[]string", "[]float64", "[]uint8", "[]byte", "json", "main.Foo", "",
]  # fmt: skip
_NASTY_TEXT = ["\\ud800", "\\udc00x", "\\u0000", "1e999", "-1e999", "NaN", "Infinity", "9" * 30, "\\"]

# Text may hold lone surrogates (json.dumps writes them as "\\ud800" escapes) and floats may be
# infinite (written as Infinity, sometimes rewritten to 1e999): what a hostile producer sends.
_text = st.one_of(st.text(max_size=8), st.sampled_from(["\ud800", "x\udc00", "\udfff\ud800"]))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    _text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_text, inner, max_size=4)),
    max_leaves=12,
)


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` nine times in ten, any JSON value otherwise: most messages get read in depth."""
    return st.integers(0, 9).flatmap(lambda i: json_values if i == 9 else valid)


_ints = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**80), 2**80))
_objects = st.dictionaries(_text, json_values, max_size=3)
_typed = st.one_of(
    st.fixed_dictionaries({"Type": st.just("int64"), "Value": _ints}),
    st.fixed_dictionaries({"Type": st.just("string"), "Value": _text}),
    st.fixed_dictionaries({"Type": st.just("float64"), "Value": st.floats(allow_nan=False)}),
    st.fixed_dictionaries({"Type": st.just("[]string"), "Value": st.lists(_text, max_size=3)}),
    st.fixed_dictionaries({"Type": st.just("json"), "Value": json_values}),
    st.fixed_dictionaries({"Type": st.sampled_from(_TYPES), "Value": json_values}),
)
args = mostly(_typed)
_FIELDS: dict[str, Any] = {
    "UUID": mostly(_text),
    "ETA": mostly(
        st.sampled_from(["2025-01-01T00:00:00Z", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+01:00"])
    ),
    "Args": mostly(st.lists(args, max_size=3)),
    "Headers": mostly(_objects),
    "Kwargs": mostly(_objects),
    "Priority": mostly(st.integers(-1, 300)),
    "RetryCount": mostly(_ints),
    "RetryTimeout": mostly(_ints),
    "GroupTaskCount": mostly(_ints),
    "GroupUUID": mostly(_text),
    "Immutable": mostly(st.booleans()),
}
_NAMED = {"Name": mostly(st.sampled_from(["add", "", "__init__"]))}
signatures = st.recursive(
    st.fixed_dictionaries(_NAMED, optional=_FIELDS),
    lambda inner: st.fixed_dictionaries(
        _NAMED, optional={**_FIELDS, "OnSuccess": st.lists(inner, max_size=2), "ChordCallback": inner}
    ),
    max_leaves=4,
)
states = st.fixed_dictionaries(
    {"State": mostly(st.sampled_from(["SUCCESS", "FAILURE", "PENDING"]))},
    optional={
        "TaskUUID": mostly(_text),
        "Results": mostly(st.lists(args, max_size=3)),
        "Error": mostly(_text),
        "CreatedAt": mostly(st.just("2025-01-01T00:00:00Z")),
        "TTL": mostly(_ints),
    },
)


@st.composite
def mangled(draw: st.DrawFn, documents: st.SearchStrategy[Any]) -> bytes:
    """A JSON document, sometimes with a hostile token spliced in or a few bytes flipped."""
    text = json.dumps(draw(documents))
    if draw(st.booleans()):
        text = text.replace("-Infinity", "-1e999").replace("Infinity", "1e999")
    how = draw(st.integers(0, 5))
    if how == 1 and '"' in text:  # a nasty escape or number inside a string or in place of one
        at = draw(st.sampled_from([i for i, c in enumerate(text) if c == '"']))
        text = text[: at + 1] + draw(st.sampled_from(_NASTY_TEXT)) + text[at + 1 :]
    elif how == 2 and ":" in text:
        at = draw(st.sampled_from([i for i, c in enumerate(text) if c == ":"]))
        text = text[: at + 1] + draw(st.sampled_from(_NASTY_TEXT[3:])) + "," + text[at + 1 :]
    raw = text.encode("utf-8", "surrogatepass")
    if how == 3 and raw:
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at + 1 :]
    return raw


def _accepts_only_writable(
    decode: Callable[[bytes], Any], encode: Callable[[Any], bytes], raw: bytes
) -> None:
    try:
        decoded = decode(raw)
    except MessageError:
        return
    encoded = encode(decoded)  # must not raise: what was read can be written back
    assert isinstance(encoded, bytes)
    decode(encoded)  # and read again


@FUZZ
@given(mangled(signatures))
def test_decode_signature_raises_only_message_error_and_reencodes(raw: bytes) -> None:
    _accepts_only_writable(codec.decode_signature, codec.encode_signature, raw)


@FUZZ
@given(mangled(states))
def test_decode_state_raises_only_message_error_and_reencodes(raw: bytes) -> None:
    _accepts_only_writable(codec.decode_state, codec.encode_state, raw)


@FUZZ
@given(mangled(json_values))
def test_decode_group_meta_raises_only_message_error_and_reencodes(raw: bytes) -> None:
    _accepts_only_writable(codec.decode_group_meta, codec.encode_group_meta, raw)


@FUZZ
@given(st.binary(max_size=64))
def test_decode_of_random_bytes_raises_only_message_error(raw: bytes) -> None:
    _accepts_only_writable(codec.decode_signature, codec.encode_signature, raw)


@pytest.mark.parametrize(
    "body",
    [
        b'{"Name":"add","UUID":"\\ud800"}',
        b'{"Name":"add","Kwargs":{"\\udc00":1}}',
        b'{"Name":"add","Args":[{"Type":"float64","Value":1e999}]}',
        b'{"Name":"add","Args":[{"Type":"json","Value":-1e999}],"X":1234567890123456789012}',
        b'{"Name":"add","Args":[{"Type":"json","Value":NaN}]}',
        b"[" * 50_000 + b"]" * 50_000,
        b'{"Name":"a","ChordCallback":' * 995 + b'{"Name":"a"}' + b"}" * 995,
    ],
    ids=["surrogate-uuid", "surrogate-kwarg", "1e999", "inf-stdlib-path", "nan", "deep-list", "deep-chord"],
)
def test_what_cannot_be_written_back_is_malformed(body: bytes) -> None:
    with pytest.raises(MessageError):
        codec.decode_signature(body)


def test_a_chain_of_100_tasks_still_decodes() -> None:
    body = b'{"Name":"a","OnSuccess":[' * 100 + b'{"Name":"a"}' + b"]}" * 100
    sig = codec.decode_signature(body)
    assert codec.decode_signature(codec.encode_signature(sig)).name == "a"


@pytest.mark.parametrize(
    ("value", "culprit"),
    [
        (__import__("datetime").datetime(2025, 1, 1), "datetime"),
        ({1, 2}, "set"),
        (__import__("decimal").Decimal("1.5"), "Decimal"),
        (float("nan"), "nan"),
        ({"a": [1, {"b": object()}]}, "object"),
    ],
)
def test_an_unwritable_result_is_named(value: Any, culprit: str) -> None:
    with pytest.raises(MessageError) as info:
        codec.check_results(codec.results_from_return(value), "x")
    assert str(info.value) == f"result of task 'x' is not JSON-serialisable: {culprit}"


def test_a_go_struct_result_is_written_back_as_is() -> None:
    state = codec.decode_state(b'{"State":"SUCCESS","Results":[{"Type":"main.Foo","Value":{"A":1}}]}')
    assert codec.decode_state(codec.encode_state(state)).results == state.results
