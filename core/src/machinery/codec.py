"""Go Machinery's JSON wire format, so Python and Go producers and workers can share queues and stores.

Signatures, task states and group records encode exactly as Go's ``encoding/json`` writes
``tasks.Signature``, ``tasks.TaskState`` and ``tasks.GroupMeta``: PascalCase keys in Go's field order,
every key present, ``null`` for nil slices, maps and pointers. Decoding follows Go's rules: keys match
case-insensitively (the last duplicate wins), unknown keys are ignored, ``null`` leaves a field at its
default. Anything malformed raises :class:`~machinery.errors.MessageError`; nothing is ever pickled.

Python-only data travels in ways a Go worker notices rather than silently mis-runs:

* keyword arguments go in an extra ``"Kwargs"`` object (absent when empty; Go ignores it);
* a positional argument Go cannot type (dict, None, nested or mixed list, int beyond 64 bits...) keeps
  its place in ``Args`` with the non-Go ``Type`` ``"json"``, so a Go worker fails the task with
  "json is not one of supported types" instead of calling it with an argument missing.

``orjson`` is used when importable (it is faster) with a fallback to the standard library for what it
cannot handle (integers beyond 64 bits); both give the same bytes for the same message.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import json
import math
import operator
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from machinery.errors import MessageError
from machinery.signature import Arg, GroupMeta, Signature, State, TaskState

__all__ = [
    "MAX_DEPTH",
    "ArgumentError",
    "check_results",
    "decode_group_meta",
    "decode_signature",
    "decode_state",
    "decode_value",
    "encode_group_meta",
    "encode_signature",
    "encode_state",
    "encode_value",
    "format_time",
    "group_meta_from_dict",
    "group_meta_to_dict",
    "infer_type",
    "parse_time",
    "results_from_return",
    "signature_from_dict",
    "signature_to_dict",
    "state_from_dict",
    "state_to_dict",
    "values_from_results",
]

JSON_TYPE: Final = "json"
"""The ``Type`` of a positional argument or result that only Python understands."""

ZERO_TIME: Final = "0001-01-01T00:00:00Z"
"""Go's zero ``time.Time`` as JSON: what Go writes for a missing ``CreatedAt``; decodes to None."""

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_UINT64_MAX: Final = 2**64 - 1


class ArgumentError(MessageError):
    """A well-formed task message whose argument values do not match their ``Type``.

    Go fails such a task rather than dropping the message; ``signature`` lets a worker do the same
    (record FAILURE under the right UUID). Its offending arguments keep their raw JSON values.
    """

    def __init__(self, message: str, signature: Signature) -> None:
        super().__init__(message)
        self.signature = signature


# --------------------------------------------------------------------------------------------------
# JSON layer: orjson when present, stdlib otherwise or when orjson refuses.

_orjson: Any
try:
    _orjson = importlib.import_module("orjson")
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None

# Datetimes and dataclasses must fail in both backends alike, so orjson is told not to handle them.
_ORJSON_OPTS: Final[int] = (
    0 if _orjson is None else _orjson.OPT_PASSTHROUGH_DATETIME | _orjson.OPT_PASSTHROUGH_DATACLASS
)
# orjson.loads turns integers beyond 64 bits into floats, so input holding a run of 19+ digits goes to
# stdlib. Mapping digits to "0" and the rest to " " finds such a run far faster than a regex.
_DIGIT_MAP: Final = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_LONG_RUN: Final = b"0" * 19


def _reject_constant(name: str) -> Any:
    raise MessageError(f"invalid JSON: {name} is not allowed")


_STD_ENCODER: Final = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False
)
_STD_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)


def _dumps(obj: Any) -> bytes:
    if _orjson is not None:
        try:
            return _orjson.dumps(obj, option=_ORJSON_OPTS)  # type: ignore[no-any-return]
        except TypeError:
            pass  # big int, non-str key, unsupported type: stdlib encodes it or says why not
    try:
        return _STD_ENCODER.encode(obj).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise MessageError(f"cannot encode as JSON: {exc}") from None


MAX_DEPTH: Final = 256
"""Deepest nesting of arrays and objects a decoded document may have (a chain of 128 tasks).
Deeper input is refused as malformed: it would only exhaust the stack somewhere later."""


def _loads(data: bytes | bytearray | memoryview | str) -> Any:
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:
        _check_depth(raw)
    if _orjson is not None and _LONG_RUN not in raw.translate(_DIGIT_MAP):
        try:
            # orjson refuses lone surrogates and numbers beyond a double: what decodes here encodes
            return _orjson.loads(raw)
        except _orjson.JSONDecodeError:
            pass  # stdlib decides: it replaces invalid UTF-8 as Go does, or gives the error
    # Go replaces invalid UTF-8 with U+FFFD instead of failing; so do we.
    text = data if isinstance(data, str) else raw.decode("utf-8", "replace")
    try:
        value = _STD_DECODER.decode(text)
    except ValueError as exc:
        raise MessageError(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise MessageError("invalid JSON: nested too deeply") from None
    _check_writable(value)
    return value


def _check_depth(raw: bytes) -> None:
    """Refuse documents nested deeper than :data:`MAX_DEPTH` (brackets inside strings skipped)."""
    depth = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > MAX_DEPTH:
                raise MessageError(f"invalid JSON: nested deeper than {MAX_DEPTH} levels")
        elif byte in (0x5D, 0x7D):
            depth -= 1


def _check_writable(value: Any) -> None:
    """What the standard library decoded must encode again: it accepts ``1e999`` (infinity) and
    lone surrogates (``"\\ud800"``), which no encoder writes back. Refused as malformed."""
    try:
        _STD_ENCODER.encode(value).encode("utf-8")
    except UnicodeEncodeError:
        raise MessageError("invalid JSON: a string holds a lone surrogate (not valid Unicode)") from None
    except ValueError:
        raise MessageError("invalid JSON: a number is out of range (infinity)") from None
    except RecursionError:
        raise MessageError("invalid JSON: nested too deeply") from None


# --------------------------------------------------------------------------------------------------
# Small helpers for error messages and field checks.


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    """The JSON kind of a decoded value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {value!r}"
    if isinstance(value, (int, float)):
        return f"number {_short(value)}"
    if isinstance(value, str):
        return f"string {_short(value)}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _fold(key: str) -> str:
    # Go matches keys with simple Unicode case folding; only the long s needs help beyond lower().
    return key.lower().replace("\u017f", "s")


class _Keys:
    """A record's Go field names: the exact set for the fast path, a folded map for Go's matching."""

    __slots__ = ("exact", "folded")

    def __init__(self, *names: str) -> None:
        self.exact = frozenset(names)
        self.folded = {_fold(n): n for n in names}

    def canonical(self, d: dict[str, Any]) -> dict[str, Any]:
        """``d`` with keys spelled as Go's field names; unknown keys dropped, last duplicate wins."""
        if d.keys() <= self.exact:
            return d  # the usual case: a Go or Python producer wrote the exact names
        out: dict[str, Any] = {}
        for key, value in d.items():
            if key in self.exact:
                out[key] = value
            elif isinstance(key, str) and (name := self.folded.get(_fold(key))) is not None:
                out[name] = value
        return out


def _want_str(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    raise MessageError(f"{where}: expected a string, got {_kind(value)}")


def _want_bool(value: Any, where: str) -> bool:
    if value is True or value is False:
        return value
    raise MessageError(f"{where}: expected true or false, got {_kind(value)}")


def _want_int(value: Any, where: str, lo: int = _INT64_MIN, hi: int = _INT64_MAX) -> int:
    if type(value) is int and lo <= value <= hi:
        return value
    if type(value) is int:
        raise MessageError(f"{where}: {_short(value)} is out of range [{lo}, {hi}]")
    raise MessageError(f"{where}: expected an integer, got {_kind(value)}")


def _want_time(value: Any, where: str) -> datetime | None:
    if value == ZERO_TIME:
        return None  # what Go writes for an unset time.Time
    text = _want_str(value, where)
    try:
        parsed = parse_time(text)
    except MessageError as exc:
        raise MessageError(f"{where}: {exc}") from None
    return None if parsed == _ZERO_DT else parsed


# --------------------------------------------------------------------------------------------------
# Times: RFC 3339, UTC, fraction trimmed (Go's time.Time MarshalJSON).

_TIME_RE: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:[.,]([0-9]{1,9}))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
_ZERO_DT: Final = datetime(1, 1, 1, tzinfo=UTC)


#: the last datetime :func:`format_time` formatted and its text (a batch send's states share one)
_last_formatted: tuple[datetime, str] = (_ZERO_DT, "0001-01-01T00:00:00Z")


def format_time(dt: datetime) -> str:
    """Format ``dt`` as Go does: RFC 3339 in UTC, fraction with trailing zeros trimmed.

    A naive datetime is taken as UTC. ``2025-11-15T12:07:02.1Z``, ``2025-11-15T12:07:02Z``.
    """
    global _last_formatted
    last = _last_formatted
    if dt is last[0]:
        return last[1]
    key = dt
    if dt.tzinfo is not UTC:
        dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    if dt.microsecond:
        text = dt.isoformat(timespec="microseconds")[:-6].rstrip("0") + "Z"
    else:
        text = dt.isoformat(timespec="seconds")[:-6] + "Z"
    _last_formatted = (key, text)
    return text


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 timestamp (any offset, 'Z', up to 9 fractional digits) to an aware UTC datetime.

    Digits beyond microseconds are truncated. Raises :class:`MessageError` on anything else.
    """
    m = _TIME_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise MessageError(f"invalid RFC 3339 time {_short(text)}")
    year, month, day, hour, minute, second, frac, sign, off_h, off_m = m.groups()
    micro = int(frac[:6].ljust(6, "0")) if frac else 0
    try:
        dt = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, UTC)
        if sign:
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            if int(off_h) > 23 or int(off_m) > 59:
                raise ValueError("offset out of range")
            dt = dt - offset if sign == "+" else dt + offset
    except (ValueError, OverflowError) as exc:
        raise MessageError(f"invalid RFC 3339 time {_short(text)}: {exc}") from None
    return dt


# --------------------------------------------------------------------------------------------------
# Typed values (Go's tasks/reflect.go).

_INT_RANGES: Final[dict[str, tuple[int, int]]] = {
    "int": (_INT64_MIN, _INT64_MAX),
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (_INT64_MIN, _INT64_MAX),
    "uint": (0, _UINT64_MAX),
    "uint8": (0, 2**8 - 1),
    "uint16": (0, 2**16 - 1),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, _UINT64_MAX),
}
_BYTES_TYPES: Final = frozenset({"[]uint8", "[]byte"})
_FLOAT_TYPES: Final = frozenset({"float32", "float64"})
_FLOAT_SLICE_TYPES: Final = frozenset({"[]float32", "[]float64"})
_BYTES_LIKE: Final = (bytes, bytearray, memoryview)

_Decoder = Callable[[Any], Any]


class _BadValueError(Exception):
    """Internal: a value does not fit its type; the caller adds the type and location."""


def _dec_bool(value: Any) -> bool:
    if value is True or value is False:
        return value
    raise _BadValueError(f"expected true or false, got {_kind(value)}")


def _int_decoder(lo: int, hi: int) -> _Decoder:
    def decode(value: Any) -> int:
        if type(value) is not int:  # bool is not an int here; 1.0 and "1" are refused like Go
            raise _BadValueError(f"expected an integer, got {_kind(value)}")
        if not lo <= value <= hi:  # Go would silently truncate; we refuse
            raise _BadValueError(f"{_short(value)} is out of range [{lo}, {hi}]")
        return value

    return decode


def _dec_float(value: Any) -> float:
    if type(value) is float:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise _BadValueError(f"{_short(value)} is too large for a float") from None
    raise _BadValueError(f"expected a number, got {_kind(value)}")


def _dec_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise _BadValueError(f"expected a string, got {_kind(value)}")


def _slice_decoder(element: _Decoder) -> _Decoder:
    def decode(value: Any) -> list[Any]:
        if value is None:
            return []  # Go: null gives an empty slice
        if not isinstance(value, (list, tuple)):
            raise _BadValueError(f"expected an array, got {_kind(value)}")
        out = []
        for i, item in enumerate(value):
            try:
                out.append(element(item))
            except _BadValueError as exc:
                raise _BadValueError(f"element {i}: {exc}") from None
        return out

    return decode


def _dec_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise _BadValueError(f"invalid base64 string {_short(value)}") from None
    if value is None:
        return b""
    if isinstance(value, _BYTES_LIKE):
        return bytes(value)
    if isinstance(value, (list, tuple)):
        return bytes(_byte_list(value))
    raise _BadValueError(f"expected a base64 string or an array of bytes, got {_kind(value)}")


_byte_list: Final = _slice_decoder(_int_decoder(0, 255))


def _dec_json(value: Any) -> Any:
    return value


def _build_decoders() -> dict[str, _Decoder]:
    scalars: dict[str, _Decoder] = {"bool": _dec_bool, "float32": _dec_float, "float64": _dec_float}
    scalars["string"] = _dec_str
    for name, (lo, hi) in _INT_RANGES.items():
        scalars[name] = _int_decoder(lo, hi)
    table = dict(scalars)
    for name, element in scalars.items():
        table["[]" + name] = _slice_decoder(element)
    table["[]uint8"] = table["[]byte"] = _dec_bytes
    table[JSON_TYPE] = _dec_json
    return table


_DECODERS: Final = _build_decoders()


def decode_value(type_: str, value: Any) -> Any:
    """Turn a decoded JSON ``value`` of Go type ``type_`` into its Python value.

    Every type of Go Machinery's ``reflect.go`` is supported (``bool``, ``int``...``int64``,
    ``uint``...``uint64``, ``float32``/``float64``, ``string``, slices of those, ``[]uint8``/``[]byte``
    from base64 or an array of numbers) plus ``"json"`` (returned as is). Integers must be JSON integers
    within the type's range; a slice may be ``null`` (empty list). Raises :class:`MessageError`.
    """
    decoder = _DECODERS.get(type_)
    if decoder is None:
        raise MessageError(f"{type_} is not one of supported types")
    try:
        return decoder(value)
    except _BadValueError as exc:
        raise MessageError(f"invalid {type_} value {_short(value)}: {exc}") from None


def _infer_list(values: list[Any] | tuple[Any, ...]) -> str:
    if not values:
        return JSON_TYPE  # element type unknown: Go fails loudly rather than guessing a slice type
    first = type(values[0])
    if not all(type(v) is first for v in values):
        return JSON_TYPE  # mixed lists (incl. int+float, which []float64 would turn into floats)
    if first is int:
        if all(_INT64_MIN <= v <= _INT64_MAX for v in values):
            return "[]int64"
        return "[]uint64" if all(0 <= v <= _UINT64_MAX for v in values) else JSON_TYPE
    return _LIST_TYPES.get(first, JSON_TYPE)


_LIST_TYPES: Final[dict[type, str]] = {bool: "[]bool", float: "[]float64", str: "[]string"}
_SCALAR_TYPES: Final[dict[type, str]] = {
    bool: "bool",
    float: "float64",
    str: "string",
    bytes: "[]uint8",
    bytearray: "[]uint8",
    memoryview: "[]uint8",
}


def infer_type(value: Any) -> str:
    """The wire ``Type`` for a Python value: a Go type name when Go can read it, else ``"json"``.

    bool → ``bool``; int → ``int64`` (``uint64`` in [2^63, 2^64), ``json`` beyond); float → ``float64``;
    str → ``string``; bytes → ``[]uint8``; a non-empty list or tuple whose elements all have the same
    type bool/int/float/str → ``[]bool``/``[]int64``/``[]float64``/``[]string``. Everything else
    (dicts, None, empty, nested or mixed lists...) → ``json``.
    """
    cls = type(value)
    if cls is int:  # exact type check: bool, a subclass of int, never lands here
        if _INT64_MIN <= value <= _INT64_MAX:
            return "int64"
        return "uint64" if 0 <= value <= _UINT64_MAX else JSON_TYPE
    found = _SCALAR_TYPES.get(cls)
    if found is not None:
        return found
    if cls is list or cls is tuple:
        return _infer_list(value)
    # Subclasses (IntEnum, str enums...) encode as their base type.
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return infer_type(int(value))
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, _BYTES_LIKE):
        return "[]uint8"
    return JSON_TYPE


def encode_value(type_: str, value: Any) -> Any:
    """The JSON-ready form of ``value`` sent with ``Type`` ``type_`` (bytes become base64).

    Checks ``value`` against an explicit Go type so a bad argument fails at the producer, not in a
    Go worker. Raises :class:`MessageError`.
    """
    if type_ in _BYTES_TYPES and isinstance(value, _BYTES_LIKE):
        return base64.b64encode(value).decode("ascii")
    if type_ == JSON_TYPE:
        return value
    decode_value(type_, value)  # validation only: the original value is sent
    if type_ in _FLOAT_TYPES and not math.isfinite(value):
        raise MessageError(f"invalid {type_} value {value!r}: not representable in JSON")
    if type_ in _FLOAT_SLICE_TYPES and not all(map(math.isfinite, value or ())):
        raise MessageError(f"invalid {type_} value {_short(value)}: not representable in JSON")
    return value


def _typed_to_wire(arg: Arg) -> tuple[str, Any]:
    value = arg.value
    type_ = arg.type
    # the usual results and arguments first (untyped, or typed as their Python type says): no inference
    # or validation pass
    cls = type(value)
    if cls is int and type_ in ("int64", "") and _INT64_MIN <= value <= _INT64_MAX:
        return "int64", value
    if cls is str and type_ in ("string", ""):
        return "string", value
    if type_:
        return type_, encode_value(type_, value)
    # An inferred type fits its value by construction; only bytes and non-finite floats need care.
    type_ = infer_type(value)
    if type_ == "[]uint8":
        return type_, base64.b64encode(value).decode("ascii")
    if (type_ == "float64" and not math.isfinite(value)) or (
        type_ == "[]float64" and not all(map(math.isfinite, value))
    ):
        raise MessageError(f"invalid {type_} value {_short(value)}: not representable in JSON")
    return type_, value


# --------------------------------------------------------------------------------------------------
# Signatures (tasks.Signature).

_SIG_KEYS: Final = _Keys(
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
    "Kwargs",  # Python extra; folds to no Go field name, so Go ignores it
)
_ARG_KEYS: Final = _Keys("Name", "Type", "Value")


def _arg_to_dict(arg: Arg) -> dict[str, Any]:
    type_, value = _typed_to_wire(arg)
    return {"Name": arg.name, "Type": type_, "Value": value}


def _sigs_to_list(sigs: list[Signature]) -> list[dict[str, Any]] | None:
    return [signature_to_dict(s) for s in sigs] if sigs else None  # empty → null (Go's nil slice)


def _check_fields(sig: Signature) -> None:
    """Refuse to write what Go (or our decoder) would refuse to read, e.g. ``priority=300``."""
    if (
        type(sig.name) is str
        and sig.name
        and type(sig.uuid) is str
        and type(sig.routing_key) is str
        and type(sig.group_uuid) is str
        and type(sig.group_task_count) is int
        and type(sig.priority) is int
        and 0 <= sig.priority <= 255
        and type(sig.retry_count) is int
        and type(sig.retry_timeout) is int
        and type(sig.immutable) is bool
        and type(sig.broker_message_group_id) is str
        and type(sig.sqs_receipt_handle) is str
        and type(sig.stop_task_deletion_on_error) is bool
        and type(sig.ignore_when_task_not_registered) is bool
        and _INT64_MIN <= sig.group_task_count <= _INT64_MAX
        and _INT64_MIN <= sig.retry_count <= _INT64_MAX
        and _INT64_MIN <= sig.retry_timeout <= _INT64_MAX
    ):
        return  # the usual case, checked in one expression
    if type(sig.name) is not str or not sig.name:
        raise MessageError(f"Signature.name must be a non-empty string, got {_short(sig.name)}")
    for key, attr, check, _zero in _SIG_SCALARS:
        check(getattr(sig, attr), f"Signature.{attr} ({key})")


def signature_to_dict(sig: Signature) -> dict[str, Any]:
    """``sig`` as Go's JSON object: every key in Go's field order, values JSON-ready.

    Bytes become base64 and times RFC 3339 strings; headers, kwargs and ``json`` values are shared,
    not copied. ``Kwargs`` is added only when non-empty. Raises :class:`MessageError` for what could
    not be decoded again: a field of the wrong type or range (``priority`` is Go's uint8), an argument
    not matching its explicit type, a NaN...
    """
    _check_fields(sig)
    d: dict[str, Any] = {
        "UUID": sig.uuid,
        "Name": sig.name,
        "RoutingKey": sig.routing_key,
        "ETA": None if sig.eta is None else format_time(sig.eta),
        "GroupUUID": sig.group_uuid,
        "GroupTaskCount": sig.group_task_count,
        "Args": [_arg_to_dict(a) for a in sig.args],
        "Headers": {} if sig.headers is None else sig.headers,
        "Priority": sig.priority,
        "Immutable": sig.immutable,
        "RetryCount": sig.retry_count,
        "RetryTimeout": sig.retry_timeout,
        "OnSuccess": _sigs_to_list(sig.on_success),
        "OnError": _sigs_to_list(sig.on_error),
        "ChordCallback": None if sig.chord_callback is None else signature_to_dict(sig.chord_callback),
        "BrokerMessageGroupId": sig.broker_message_group_id,
        "SQSReceiptHandle": sig.sqs_receipt_handle,
        "StopTaskDeletionOnError": sig.stop_task_deletion_on_error,
        "IgnoreWhenTaskNotRegistered": sig.ignore_when_task_not_registered,
    }
    if sig.kwargs:
        d["Kwargs"] = sig.kwargs
    return d


def encode_signature(sig: Signature) -> bytes:
    """The task message for ``sig``: UTF-8 JSON byte-compatible with Go Machinery's."""
    return _dumps(signature_to_dict(sig))


def _arg_from(raw: Any, index: int, where: str, errors: list[str]) -> Arg:
    # The location string is only built on error: this runs for every argument of every message.
    if type(raw) is dict and len(raw) == 3 and "Type" in raw and "Name" in raw and "Value" in raw:
        # the usual argument, exactly Go's three keys: one pass, no key folding (the path below decides
        # everything else, and says what is wrong)
        type_, name = raw["Type"], raw["Name"]
        if type(type_) is str and type(name) is str and (decoder := _DECODERS.get(type_)) is not None:
            try:
                return Arg(decoder(raw["Value"]), type_, name)
            except _BadValueError:
                pass
    if type(raw) is not dict:
        raise MessageError(f"{where}[{index}]: expected an object, got {_kind(raw)}")
    f = _ARG_KEYS.canonical(raw)
    type_ = f.get("Type")
    if type(type_) is not str:
        raise MessageError(f"{where}[{index}].Type: expected a type name, got {_kind(type_)}")
    name = f.get("Name")
    if name is None:
        name = ""
    elif type(name) is not str:
        raise MessageError(f"{where}[{index}].Name: expected a string, got {_kind(name)}")
    value = f.get("Value")
    decoder = _DECODERS.get(type_)
    if decoder is None:
        errors.append(f"{where}[{index}]: {type_} is not one of supported types")
        return Arg(value=value, type=type_, name=name)
    try:
        value = decoder(value)
    except _BadValueError as exc:
        # Go fails such a task rather than dropping it; collect and let the caller decide.
        errors.append(f"{where}[{index}]: invalid {type_} value {_short(value)}: {exc}")
    return Arg(value=value, type=type_, name=name)


def _args_from(raw: Any, where: str, errors: list[str]) -> list[Arg]:
    if raw is None:
        return []
    if type(raw) is not list:
        raise MessageError(f"{where}: expected an array, got {_kind(raw)}")
    return [_arg_from(a, i, where, errors) for i, a in enumerate(raw)]


def _sigs_from(raw: Any, where: str, errors: list[str]) -> list[Signature]:
    if raw is None:
        return []
    if type(raw) is not list:
        raise MessageError(f"{where}: expected an array, got {_kind(raw)}")
    return [_sig_from(s, f"{where}[{i}]", errors) for i, s in enumerate(raw)]


def _object_from(raw: Any, where: str) -> dict[str, Any]:
    if type(raw) is dict:
        return raw
    raise MessageError(f"{where}: expected an object, got {_kind(raw)}")


def _uint8(value: Any, where: str) -> int:
    return _want_int(value, where, 0, 255)


# (key, attribute, check, Go's zero value): fields that need no more than a type check. A field
# whose JSON value *is* the zero value is skipped; JSON decoders reuse the "", 0 and False singletons.
_SIG_SCALARS: Final[tuple[tuple[str, str, Callable[[Any, str], Any], Any], ...]] = (
    ("UUID", "uuid", _want_str, ""),
    ("RoutingKey", "routing_key", _want_str, ""),
    ("GroupUUID", "group_uuid", _want_str, ""),
    ("GroupTaskCount", "group_task_count", _want_int, 0),
    ("Priority", "priority", _uint8, 0),
    ("Immutable", "immutable", _want_bool, False),
    ("RetryCount", "retry_count", _want_int, 0),
    ("RetryTimeout", "retry_timeout", _want_int, 0),
    ("BrokerMessageGroupId", "broker_message_group_id", _want_str, ""),
    ("SQSReceiptHandle", "sqs_receipt_handle", _want_str, ""),
    ("StopTaskDeletionOnError", "stop_task_deletion_on_error", _want_bool, False),
    ("IgnoreWhenTaskNotRegistered", "ignore_when_task_not_registered", _want_bool, False),
)


#: the scalars a message usually leaves at Go's zero value (all but UUID and RoutingKey), their keys and
#: zeros: one identity check of them all (in C) skips their loop
_SIG_USUALLY_ZERO: Final = tuple(entry for entry in _SIG_SCALARS if entry[0] not in ("UUID", "RoutingKey"))
_SIG_ALWAYS_CHECKED: Final = tuple(entry for entry in _SIG_SCALARS if entry[0] in ("UUID", "RoutingKey"))
_ZERO_KEYS: Final = tuple(entry[0] for entry in _SIG_USUALLY_ZERO)
_ZEROS: Final = tuple(entry[3] for entry in _SIG_USUALLY_ZERO)


def _sig_from(d: Any, where: str, errors: list[str]) -> Signature:
    if type(d) is not dict:
        raise MessageError(f"{where or 'task message'}: expected an object, got {_kind(d)}")
    f = _SIG_KEYS.canonical(d)
    p = f"{where}." if where else ""
    name = f.get("Name")
    if type(name) is not str or not name:
        got = "missing" if name is None else f"not a task name: {_kind(name)}"
        raise MessageError(f"{p}Name is {got}")
    sig = Signature(name=name)
    sig.args = _args_from(f.get("Args"), p + "Args", errors)  # already Args: no wrapping pass
    scalars = _SIG_ALWAYS_CHECKED
    if not all(map(operator.is_, map(f.get, _ZERO_KEYS), _ZEROS)):
        scalars = _SIG_SCALARS
    for key, attr, check, zero in scalars:
        value = f.get(key)
        if value is not None and value is not zero:  # Go: null leaves the field at its zero value
            setattr(sig, attr, check(value, p + key))
    if (eta := f.get("ETA")) is not None:
        sig.eta = _want_time(eta, p + "ETA")
    if (headers := f.get("Headers")) is not None:
        sig.headers = _object_from(headers, p + "Headers")
    if (kwargs := f.get("Kwargs")) is not None:
        sig.kwargs = _object_from(kwargs, p + "Kwargs")
    if (on_success := f.get("OnSuccess")) is not None:
        sig.on_success = _sigs_from(on_success, p + "OnSuccess", errors)
    if (on_error := f.get("OnError")) is not None:
        sig.on_error = _sigs_from(on_error, p + "OnError", errors)
    if (callback := f.get("ChordCallback")) is not None:
        sig.chord_callback = _sig_from(callback, p + "ChordCallback", errors)
    return sig


def signature_from_dict(d: Any) -> Signature:
    """Build a :class:`Signature` from a decoded Go JSON object (keys matched case-insensitively).

    Argument values are decoded by their ``Type``. Raises :class:`ArgumentError` (a
    :class:`MessageError` carrying the decoded signature) when only argument values are wrong, and
    :class:`MessageError` for any other malformed input.
    """
    errors: list[str] = []
    sig = _sig_from(d, "", errors)
    if errors:
        raise ArgumentError("; ".join(errors), sig)
    return sig


def decode_signature(data: bytes | bytearray | memoryview | str) -> Signature:
    """Decode a task message (Go Machinery's JSON). See :func:`signature_from_dict` for errors."""
    return signature_from_dict(_loads(data))


# --------------------------------------------------------------------------------------------------
# Results and task states (tasks.TaskResult, tasks.TaskState).


def results_from_return(value: Any) -> list[Arg] | None:
    """Typed results for a task's return value.

    A tuple gives one result per element, None gives None (Go's ``Results: null``), anything else
    one result. Types are inferred as for arguments (:func:`infer_type`).
    """
    if value is None:
        return None
    if type(value) is tuple:
        return [Arg(value=v, type=infer_type(v)) for v in value]
    return [Arg(value=value, type=infer_type(value))]


def check_results(results: list[Arg] | None, task_name: str) -> None:
    """Raise :class:`MessageError` naming the culprit when ``results`` cannot be stored as JSON,
    e.g. ``result of task 'x' is not JSON-serialisable: datetime``. Cheap for plain scalars."""
    for result in results or ():
        value = result.value
        if type(value) in (int, bool) or (type(value) is str and value.isascii()):
            continue
        try:
            _, wire = _typed_to_wire(result)
            _dumps(wire).decode("utf-8")
        except (MessageError, UnicodeError, RecursionError):
            culprit = _unwritable(value)
            raise MessageError(f"result of task {task_name!r} is not JSON-serialisable: {culprit}") from None


def _unwritable(value: Any, depth: int = 0) -> str:
    """A short name for the first part of ``value`` JSON cannot hold (its type, NaN, ...)."""
    if depth > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeError:
            return "str with a lone surrogate"
        return ""
    if value is None or isinstance(value, (int, float, *_BYTES_LIKE)):
        return ""
    if isinstance(value, (list, tuple)):
        items: Any = value
    elif isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                return f"dict key of type {type(key).__name__}"
        items = value.values()
    else:
        return type(value).__name__
    for item in items:
        if found := _unwritable(item, depth + 1):
            return found
    return ""


def values_from_results(results: list[Arg] | None) -> Any:
    """The inverse of :func:`results_from_return`: None/[] → None, one → its value, several → a tuple.

    ``results`` hold decoded values, as :func:`decode_state` produces them.
    """
    if not results:
        return None
    if len(results) == 1:
        return results[0].value
    return tuple(r.value for r in results)


def _result_to_dict(result: Arg) -> dict[str, Any]:
    if result.type and result.type not in _DECODERS:
        # A type only Go knows (a struct such as "main.Foo"), decoded as raw JSON: written back as is.
        return {"Type": result.type, "Value": result.value}
    type_, value = _typed_to_wire(result)
    return {"Type": type_, "Value": value}


_RESULT_KEYS: Final = _Keys("Type", "Value")


def _result_from(raw: Any, where: str) -> Arg:
    if type(raw) is not dict:
        raise MessageError(f"{where}: expected an object, got {_kind(raw)}")
    f = _RESULT_KEYS.canonical(raw)
    type_ = f.get("Type")
    if type_ is None:
        type_ = ""
    elif type(type_) is not str:
        raise MessageError(f"{where}.Type: expected a type name, got {_kind(type_)}")
    value = f.get("Value")
    decoder = _DECODERS.get(type_)
    if decoder is not None:
        try:
            value = decoder(value)
        except _BadValueError as exc:
            raise MessageError(f"{where}: invalid {type_} value {_short(value)}: {exc}") from None
    # Other types (a Go struct such as "main.Foo") keep their JSON value: more useful than Go's error.
    return Arg(value=value, type=type_)


_STATE_KEYS: Final = _Keys("TaskUUID", "TaskName", "State", "Results", "Error", "CreatedAt", "TTL")
_STATES: Final = {s.value: s for s in State}


def state_to_dict(state: TaskState) -> dict[str, Any]:
    """``state`` as Go's TaskState JSON object (keys in Go's order; CreatedAt None → Go's zero time)."""
    results = state.results
    return {
        "TaskUUID": state.task_uuid,
        "TaskName": state.task_name,
        "State": state.state.value if type(state.state) is State else State(state.state).value,
        "Results": None if results is None else [_result_to_dict(r) for r in results],
        "Error": state.error,
        "CreatedAt": ZERO_TIME if state.created_at is None else format_time(state.created_at),
        "TTL": state.ttl,
    }


def _optional_str(f: dict[str, Any], key: str) -> str:
    value = f.get(key)
    return "" if value is None else _want_str(value, key)


def state_from_dict(d: Any) -> TaskState:
    """Build a :class:`TaskState` from Go's TaskState JSON object; result values are decoded by Type.

    ``State`` must be one of Machinery's states. Results whose Type is not a Go type this codec knows
    (e.g. a Go struct) keep their JSON value. Raises :class:`MessageError`.
    """
    if type(d) is not dict:
        raise MessageError(f"task state: expected an object, got {_kind(d)}")
    f = _STATE_KEYS.canonical(d)
    raw_state = f.get("State")
    state = _STATES.get(raw_state) if type(raw_state) is str else None
    if state is None:
        got = "missing" if raw_state is None else f"not a task state: {_kind(raw_state)}"
        raise MessageError(f"State is {got}")
    out = TaskState(task_uuid=_optional_str(f, "TaskUUID"), state=state)
    out.task_name = _optional_str(f, "TaskName")
    out.error = _optional_str(f, "Error")
    if (results := f.get("Results")) is not None:
        if type(results) is not list:
            raise MessageError(f"Results: expected an array, got {_kind(results)}")
        out.results = [_result_from(r, f"Results[{i}]") for i, r in enumerate(results)]
    if (created := f.get("CreatedAt")) is not None:
        out.created_at = _want_time(created, "CreatedAt")
    if (ttl := f.get("TTL")) is not None:
        out.ttl = _want_int(ttl, "TTL")
    return out


def encode_state(state: TaskState) -> bytes:
    """A task state record as Go Machinery's JSON."""
    return _dumps(state_to_dict(state))


def decode_state(data: bytes | bytearray | memoryview | str) -> TaskState:
    """Decode a task state record (Go Machinery's JSON). Raises :class:`MessageError`."""
    return state_from_dict(_loads(data))


# --------------------------------------------------------------------------------------------------
# Group records (tasks.GroupMeta).

_GROUP_KEYS: Final = _Keys("GroupUUID", "TaskUUIDs", "ChordTriggered", "Lock", "CreatedAt", "TTL")


def group_meta_to_dict(meta: GroupMeta) -> dict[str, Any]:
    """``meta`` as Go's GroupMeta JSON object (keys in Go's order; CreatedAt None → Go's zero time)."""
    return {
        "GroupUUID": meta.group_uuid,
        "TaskUUIDs": list(meta.task_uuids),
        "ChordTriggered": meta.chord_triggered,
        "Lock": meta.lock,
        "CreatedAt": ZERO_TIME if meta.created_at is None else format_time(meta.created_at),
        "TTL": meta.ttl,
    }


def group_meta_from_dict(d: Any) -> GroupMeta:
    """Build a :class:`GroupMeta` from Go's GroupMeta JSON object. Raises :class:`MessageError`."""
    if type(d) is not dict:
        raise MessageError(f"group record: expected an object, got {_kind(d)}")
    f = _GROUP_KEYS.canonical(d)
    meta = GroupMeta(group_uuid=_optional_str(f, "GroupUUID"))
    if (uuids := f.get("TaskUUIDs")) is not None:
        if type(uuids) is not list:
            raise MessageError(f"TaskUUIDs: expected an array, got {_kind(uuids)}")
        meta.task_uuids = [_want_str(u, f"TaskUUIDs[{i}]") for i, u in enumerate(uuids)]
    if (triggered := f.get("ChordTriggered")) is not None:
        meta.chord_triggered = _want_bool(triggered, "ChordTriggered")
    if (lock := f.get("Lock")) is not None:
        meta.lock = _want_bool(lock, "Lock")
    if (created := f.get("CreatedAt")) is not None:
        meta.created_at = _want_time(created, "CreatedAt")
    if (ttl := f.get("TTL")) is not None:
        meta.ttl = _want_int(ttl, "TTL")
    return meta


def encode_group_meta(meta: GroupMeta) -> bytes:
    """A group record as Go Machinery's JSON."""
    return _dumps(group_meta_to_dict(meta))


def decode_group_meta(data: bytes | bytearray | memoryview | str) -> GroupMeta:
    """Decode a group record (Go Machinery's JSON). Raises :class:`MessageError`."""
    return group_meta_from_dict(_loads(data))
