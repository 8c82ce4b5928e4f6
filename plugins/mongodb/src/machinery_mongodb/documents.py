"""Task states and group records as MongoDB documents (Go Machinery's layout, reference §3.4).

``tasks``: ``{_id: <task uuid>, state, task_name, results: [{type, value}] | null, error,
created_at: <date>, delete_at: <date>}``. ``group_metas``: ``{_id: <group uuid>, task_uuids: [...],
chord_triggered, lock, created_at, delete_at}``.

Results keep their Go type name and the value as a native BSON value (``int64``, ``string``,
``[]string``, a document for ``json``...), so Go's backend reads them. Bytes are base64 text, as in
Go's JSON. A value BSON cannot hold exactly goes as JSON text in ``json`` instead of ``value``
(``{type: "uint64", json: "18446744073709551615"}``): integers outside int64 (``uint64`` above 2**63,
``2**100`` in a ``json`` value) and mapping keys MongoDB treats specially (``$...``, dotted, NUL). Dates
are BSON dates: milliseconds, so a ``created_at`` keeps its millisecond, not its microseconds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from bson.int64 import Int64

from machinery import codec
from machinery.errors import MessageError
from machinery.signature import TaskState

__all__ = ["COMPLETED", "results_document", "state_from_document", "state_update"]

COMPLETED = ["SUCCESS", "FAILURE"]
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def fits_bson(value: Any) -> bool:
    """True when BSON stores ``value`` and gives back an equal JSON-like value."""
    cls = type(value)
    if value is None or cls is bool or cls is float or cls is str:
        return True
    if cls is int:
        return bool(_INT64_MIN <= value <= _INT64_MAX)
    if cls is list:
        return all(fits_bson(item) for item in value)
    if cls is dict:
        return all(
            type(key) is str and not key.startswith("$") and "." not in key and "\x00" not in key
            for key in value
        ) and all(fits_bson(item) for item in value.values())
    return False


def _result_document(wire: Mapping[str, Any], task_uuid: str) -> dict[str, Any]:
    type_, value = wire["Type"], wire["Value"]
    if fits_bson(value):
        return {"type": type_, "value": value}
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise MessageError(
            f"result of task {task_uuid!r} cannot be stored: {type(value).__name__} value is not "
            f"JSON-serialisable ({exc})"
        ) from None
    return {"type": type_, "json": text}


def results_document(state: TaskState) -> list[dict[str, Any]] | None:
    """The ``results`` field for ``state``; typed and checked by the core codec."""
    if state.results is None:
        return None
    wire = codec.state_to_dict(state)["Results"]
    return [_result_document(r, state.task_uuid) for r in wire]


def state_update(state: TaskState, now: datetime, delete_at: datetime | None) -> dict[str, Any]:
    """The upsert that stores ``state``: everything replaced except a task name or creation time the
    new state does not have (the stored one is kept; a first state without one gets "" / now).
    ``delete_at`` None (results never expire) removes the field, so the TTL index never deletes it."""
    fields: dict[str, Any] = {
        "state": state.state.value,
        "results": results_document(state),
        "error": state.error,
    }
    on_insert: dict[str, Any] = {}
    if state.task_name:
        fields["task_name"] = state.task_name
    else:
        on_insert["task_name"] = ""
    if state.created_at is not None:
        fields["created_at"] = state.created_at
    else:
        on_insert["created_at"] = now
    update: dict[str, Any] = {"$set": fields}
    if delete_at is None:
        update["$unset"] = {"delete_at": ""}
    else:
        fields["delete_at"] = delete_at
    if on_insert:
        update["$setOnInsert"] = on_insert
    return update


def plain(value: Any) -> Any:
    """``value`` with the driver's ``Int64`` turned back into ``int`` (the codec wants exact ints)."""
    cls = type(value)
    if cls is Int64:
        return int(value)
    if cls is list:
        return [plain(item) for item in value]
    if cls is dict:
        return {key: plain(item) for key, item in value.items()}
    return value


def _wire_result(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, Mapping):
        return {"Type": "", "Value": doc}
    if "json" in doc:
        try:
            value = json.loads(doc["json"])
        except (TypeError, ValueError) as exc:
            raise MessageError(f"a result's json text is not JSON: {exc}") from None
    else:
        value = plain(doc.get("value"))
    return {"Type": doc.get("type", ""), "Value": value}


def state_from_document(doc: Mapping[str, Any]) -> TaskState:
    """A :class:`TaskState` from a ``tasks`` document (results decoded by their type). Raises
    :class:`~machinery.errors.MessageError` for a document that is not a task state."""
    results = doc.get("results")
    if results is not None and not isinstance(results, list):
        raise MessageError(f"results: expected an array, got {type(results).__name__}")
    wire = {
        "TaskUUID": doc.get("_id"),
        "TaskName": doc.get("task_name") or "",
        "State": doc.get("state"),
        "Results": None if results is None else [_wire_result(r) for r in results],
        "Error": doc.get("error") or "",
    }
    state = codec.state_from_dict(wire)
    created = doc.get("created_at")
    if isinstance(created, datetime):
        state.created_at = created
    return state
