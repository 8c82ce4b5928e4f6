"""The DynamoDB result backend: Machinery's two tables, typed results, TTL, exactly-once chords.

Tables (Machinery's names and keys, created on first use unless ``create_missing`` is off):

- ``task_states`` (key ``TaskUUID``): ``TaskName``, ``State``, ``Results`` (a list of ``{Type, Value}``
  maps), ``Error``, ``CreatedAt``, ``TTL``. Go stores every result value as text and loses its type; here
  ``Value`` holds the value's JSON text (a ``string`` result its plain text, as Go writes it), so results
  come back with their types, and Go readers still see numbers, booleans and strings as they expect.
- ``group_metas`` (key ``GroupUUID``): ``TaskUUIDs`` (a list: the group's order), ``ChordTriggered``,
  ``Lock``, ``CreatedAt``, ``TTL``.

``TTL`` is epoch seconds, ``results_expire_in`` after the last write; the tables this package creates
have DynamoDB's TTL turned on for it. DynamoDB deletes expired items lazily (within days), so reads treat
an item whose ``TTL`` passed as gone. ``results_expire_in = -1`` (never expire): items get no ``TTL``.

``trigger_chord`` is one conditional update (``ChordTriggered = false`` → ``true``): true exactly once per
group, across processes. ``wait()`` polls with consistent batch reads that start 50 ms apart and slow down
to ``max_poll_interval`` (0.5 s) while nothing changes, so a waiter costs at most ~2 reads a second.
A state over DynamoDB's 400 KB item limit is stored as a FAILURE saying so, never retried.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from machinery import codec
from machinery.backend import BaseBackend
from machinery.capabilities import Capability
from machinery.config import Config
from machinery.errors import BackendError, MessageError, UnknownGroupError
from machinery.signature import Arg, GroupMeta, State, TaskState, now_utc

from .client import describe_error, error_code
from .settings import DynamoDBSettings
from .tables import Tables
from .url import AWSTarget, parse_backend_url

__all__ = ["ITEM_LIMIT", "DynamoDBBackend"]

logger = logging.getLogger("machinery.dynamodb")

#: DynamoDB's item size limit
ITEM_LIMIT = 400 * 1024
#: BatchGetItem takes at most 100 keys, BatchWriteItem 25 items
GET_BATCH = 100
WRITE_BATCH = 25
FIRST_POLL = 0.05
#: updates of one set_states call in flight at once (a worker's batch of finished tasks)
PARALLEL_UPDATES = 8
#: error text kept when an error message alone would overflow an item
ERROR_KEEP = 64 * 1024

#: bytes of the attribute names of a task-state item (``_item_size`` counts the values' names instead)
_NAMES_SIZE = 64
_NAMES = {"#s": "State", "#e": "Error", "#r": "Results", "#t": "TTL", "#n": "TaskName", "#c": "CreatedAt"}


def _value_text(type_: str, value: Any) -> str:
    """A result value as stored: a string's own text, anything else its JSON text."""
    if type_ == "string" and isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _value_from_text(type_: str, text: str) -> Any:
    if type_ == "string":
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text  # written by Go (``fmt`` text, e.g. "[1 2 3]"): the decoder reports what it can


def _results_attribute(state: TaskState) -> dict[str, Any]:
    wire = codec.state_to_dict(state)["Results"]
    if wire is None:
        return {"NULL": True}
    return {
        "L": [
            {"M": {"Type": {"S": r["Type"]}, "Value": {"S": _value_text(r["Type"], r["Value"])}}}
            for r in wire
        ]
    }


def _attribute_size(value: dict[str, Any]) -> int:
    """DynamoDB's size of one attribute value (strings by UTF-8 length, 3 bytes per list/map entry)."""
    kind, inner = next(iter(value.items()))
    if kind == "S":
        return len(inner.encode("utf-8"))
    if kind == "N":
        return len(inner) // 2 + 2
    if kind == "L":
        return 3 + sum(1 + _attribute_size(v) for v in inner)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + _attribute_size(v) for k, v in inner.items())
    return 1


def _item_size(attributes: dict[str, dict[str, Any]]) -> int:
    return sum(len(name.encode()) + _attribute_size(value) for name, value in attributes.items())


class DynamoDBBackend(BaseBackend):
    """The DynamoDB result backend. Build it with :meth:`from_url` (no I/O); tables are checked (and
    created when missing) on first use."""

    capabilities = frozenset({Capability.MULTI_PROCESS, Capability.EXPIRY})

    def __init__(self, target: AWSTarget, config: Config | None = None, **options: Any) -> None:
        super().__init__(config)
        self.target = target
        #: the URL's query and the keywords override the config's section for this backend
        self.settings = DynamoDBSettings.of(self.config).with_query(
            target.options, target.where, values=options
        )
        self.states_table = self.settings.task_states_table
        self.groups_table = self.settings.group_metas_table
        keys = {self.states_table: "TaskUUID", self.groups_table: "GroupUUID"}
        self._tables = Tables(target, self.config, self.settings, keys)
        self._clients = self._tables.clients
        self._pool_lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._executor_pid = 0

    @classmethod
    def from_url(cls, url: str, config: Config, **options: Any) -> DynamoDBBackend:
        """A backend for ``url`` (see :mod:`machinery_sqs.url`); ``options`` are settings."""
        return cls(parse_backend_url(url), config, **options)

    def __repr__(self) -> str:
        return f"<DynamoDBBackend {self.target.where} {self.states_table}/{self.groups_table}>"

    # -- plumbing ------------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The boto3 DynamoDB client of this process (tables checked on first use)."""
        return self._tables.client

    def _request(self, operation: str, **kwargs: Any) -> Any:
        return self._tables.request(operation, **kwargs)

    def _call(self, operation: str, table: str, **kwargs: Any) -> Any:
        return self._tables.call(operation, table, **kwargs)

    def _ttl(self) -> int | None:
        """``TTL`` of an item written now (epoch seconds); None when results never expire (no ``TTL``)."""
        return None if self.never_expires else math.ceil(time.time() + self.expires_in)

    def _ttl_attribute(self) -> dict[str, dict[str, str]]:
        """``{"TTL": ...}`` for a new item, or nothing when results never expire."""
        ttl = self._ttl()
        return {} if ttl is None else {"TTL": {"N": str(ttl)}}

    @staticmethod
    def _expired(item: dict[str, Any]) -> bool:
        ttl = item.get("TTL", {}).get("N")
        return ttl is not None and float(ttl) <= time.time()

    # -- states --------------------------------------------------------------------------------------
    def set_state(self, state: TaskState) -> None:
        """Store ``state`` (one UpdateItem: the task name and creation time stay when not given)."""
        values = self._state_values(state)
        size = _item_size(values) + _NAMES_SIZE + len(state.task_uuid)
        if size > ITEM_LIMIT:
            state = self._too_large(state, size)
            values = self._state_values(state)
        name = "#n = :n" if state.task_name else "#n = if_not_exists(#n, :n)"
        created = "#c = :c" if state.created_at is not None else "#c = if_not_exists(#c, :c)"
        # never expiring: no TTL, and one left by an earlier write is removed
        expiry = ", #t = :t" if ":t" in values else ""
        remove = "" if expiry else " REMOVE #t"
        try:
            self._request(
                "update_item",
                TableName=self.states_table,
                Key={"TaskUUID": {"S": state.task_uuid}},
                UpdateExpression=f"SET #s = :s, #e = :e, #r = :r{expiry}, {name}, {created}{remove}",
                ExpressionAttributeNames=_NAMES,
                ExpressionAttributeValues=values,
            )
        except Exception as exc:
            too_big = error_code(exc) == "ValidationException" and "size" in str(exc).lower()
            if too_big and (state.results or len(state.error) > ERROR_KEEP):
                self.set_state(self._too_large(state, size))  # the server counts a little differently
                return
            raise BackendError(
                f"DynamoDB UpdateItem on table {self.states_table!r} at {self.target.where} failed: "
                f"{describe_error(exc)}"
            ) from exc

    def _state_values(self, state: TaskState) -> dict[str, Any]:
        created = state.created_at or now_utc()
        values = {
            ":s": {"S": state.state.value},
            ":e": {"S": state.error},
            ":r": _results_attribute(state),
            ":n": {"S": state.task_name},
            ":c": {"S": codec.format_time(created)},
        }
        ttl = self._ttl()
        if ttl is not None:
            values[":t"] = {"N": str(ttl)}
        return values

    @staticmethod
    def _too_large(state: TaskState, size: int) -> TaskState:
        """What is stored instead of a state over the item limit: a FAILURE saying why."""
        error = (
            f"result too large for DynamoDB: the state is {size} bytes, over the 400 KB item limit "
            "(return a reference, e.g. an S3 key, instead)"
            if state.results
            else state.error[:ERROR_KEEP] + " [error text truncated: over DynamoDB's item limit]"
        )
        logger.error(
            "task %s: its %s state of %d bytes is over DynamoDB's 400 KB item limit: stored as %s",
            state.task_uuid,
            state.state.value,
            size,
            "a FAILURE saying so" if state.results else "a FAILURE with the error text cut to 64 KB",
        )
        return TaskState(state.task_uuid, State.FAILURE, state.task_name, None, error, state.created_at)

    def set_states(self, states: Sequence[TaskState]) -> None:
        """Store several states: new PENDING records in ``BatchWriteItem`` calls (25 a call), the rest
        one update each (an update keeps the name and creation time, a batch write cannot)."""
        fresh = [s for s in states if s.state is State.PENDING and s.task_name and s.created_at is not None]
        fresh_ids = {id(s) for s in fresh}
        for start in range(0, len(fresh), WRITE_BATCH):
            self._put_batch(fresh[start : start + WRITE_BATCH])
        by_task: dict[str, list[TaskState]] = {}
        for state in states:
            if id(state) not in fresh_ids:
                by_task.setdefault(state.task_uuid, []).append(state)
        if len(by_task) <= 1:
            for same_task in by_task.values():
                self._set_in_order(same_task)
            return
        # one round trip each: in parallel across tasks, in order within a task
        for future in [self._pool().submit(self._set_in_order, same) for same in by_task.values()]:
            future.result()

    def _set_in_order(self, states: Sequence[TaskState]) -> None:
        for state in states:
            self.set_state(state)

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        """Threads for parallel updates (one pool per process: a forked child makes its own)."""
        with self._pool_lock:
            if self._executor is None or self._executor_pid != os.getpid():
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    PARALLEL_UPDATES, thread_name_prefix="machinery-dynamodb"
                )
                self._executor_pid = os.getpid()
            return self._executor

    def _put_batch(self, states: Sequence[TaskState]) -> None:
        requests = []
        for state in states:
            values = self._state_values(state)
            item = {
                "TaskUUID": {"S": state.task_uuid},
                "State": values[":s"],
                "Error": values[":e"],
                "Results": values[":r"],
                "TaskName": values[":n"],
                "CreatedAt": values[":c"],
            }
            if ":t" in values:
                item["TTL"] = values[":t"]
            requests.append({"PutRequest": {"Item": item}})
        pending: dict[str, Any] = {self.states_table: requests}
        for attempt in range(8):
            response = self._call("batch_write_item", self.states_table, RequestItems=pending)
            pending = response.get("UnprocessedItems") or {}
            if not pending:
                return
            time.sleep(min(1.0, 0.05 * 2**attempt))  # throttled: back off, then the rest again
        raise BackendError(
            f"DynamoDB kept throttling BatchWriteItem on {self.states_table!r} at {self.target.where}"
        )

    def get_state(self, task_uuid: str) -> TaskState | None:
        """The task's state (a consistent read), or None when unknown or expired."""
        response = self._call(
            "get_item", self.states_table, TableName=self.states_table, Key={"TaskUUID": {"S": task_uuid}},
            ConsistentRead=True,
        )  # fmt: skip
        item = response.get("Item")
        if item is None or self._expired(item) or "State" not in item:
            return None  # no State: not a state record (e.g. left by a failed write on an emulator)
        return self._state_from_item(item)

    def _state_from_item(self, item: dict[str, Any]) -> TaskState:
        results = None
        raw = item.get("Results", {}).get("L")
        if raw is not None:
            results = []
            for entry in raw:
                fields = entry.get("M", {})
                type_ = fields.get("Type", {}).get("S", "")
                results.append(
                    {"Type": type_, "Value": _value_from_text(type_, fields.get("Value", {}).get("S", ""))}
                )
        record = {
            "TaskUUID": item["TaskUUID"]["S"],
            "TaskName": item.get("TaskName", {}).get("S", ""),
            "State": item.get("State", {}).get("S", ""),
            "Error": item.get("Error", {}).get("S", ""),
            "CreatedAt": item.get("CreatedAt", {}).get("S") or None,
            "Results": results,
        }
        try:
            return codec.state_from_dict(record)
        except MessageError:
            if results is None:
                raise
            # a value this codec cannot decode by its Type (written by Go as text): keep it as stored
            state = codec.state_from_dict({**record, "Results": None})
            state.results = [Arg(r["Value"], r["Type"]) for r in results]
            return state

    def _get_many(self, table: str, key: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Items by key with consistent BatchGetItem reads (100 a call, unprocessed keys read again)."""
        found: dict[str, dict[str, Any]] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), GET_BATCH):
            keys = [{key: {"S": i}} for i in unique[start : start + GET_BATCH]]
            request: dict[str, Any] = {table: {"Keys": keys, "ConsistentRead": True}}
            for attempt in range(8):
                response = self._call("batch_get_item", table, RequestItems=request)
                for item in response.get("Responses", {}).get(table, []):
                    if not self._expired(item) and (table != self.states_table or "State" in item):
                        found[item[key]["S"]] = item
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    break
                time.sleep(min(1.0, 0.05 * 2**attempt))
        return found

    def wait(self, task_uuids: Sequence[str], timeout: float) -> dict[str, TaskState]:
        """Block until every task is completed or ``timeout`` passed: consistent batch reads 50 ms
        apart at first, slowing to ``max_poll_interval`` while nothing completes."""
        deadline = time.monotonic() + timeout
        wanted = list(dict.fromkeys(task_uuids))
        done: dict[str, TaskState] = {}
        interval = FIRST_POLL
        while True:
            missing = [u for u in wanted if u not in done]
            before = len(done)
            for uuid, item in self._get_many(self.states_table, "TaskUUID", missing).items():
                state = self._state_from_item(item)
                if state.is_completed:
                    done[uuid] = state
            remaining = deadline - time.monotonic()
            if len(done) == len(wanted) or remaining <= 0:
                return done
            interval = (
                FIRST_POLL if len(done) > before else min(interval * 1.5, self.settings.max_poll_interval)
            )
            time.sleep(min(interval, remaining))

    # -- groups --------------------------------------------------------------------------------------
    def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        """Record the group's members in order (``ChordTriggered`` false)."""
        meta = GroupMeta(group_uuid, list(task_uuids), created_at=now_utc())
        item: dict[str, dict[str, Any]] = {
            "GroupUUID": {"S": group_uuid},
            "TaskUUIDs": {"L": [{"S": u} for u in meta.task_uuids]},
            "ChordTriggered": {"BOOL": False},
            "Lock": {"BOOL": False},
            "CreatedAt": {"S": codec.format_time(now_utc())},
            **self._ttl_attribute(),
        }
        size = _item_size(item)
        if size > ITEM_LIMIT:
            raise BackendError(
                f"group {group_uuid} of {len(meta.task_uuids)} tasks is {size} bytes, over DynamoDB's "
                f"{ITEM_LIMIT}-byte item limit: split it into smaller groups"
            )
        self._call("put_item", self.groups_table, TableName=self.groups_table, Item=item)

    def _group_item(self, group_uuid: str) -> dict[str, Any]:
        response = self._call(
            "get_item", self.groups_table, TableName=self.groups_table, Key={"GroupUUID": {"S": group_uuid}},
            ConsistentRead=True,
        )  # fmt: skip
        item: dict[str, Any] | None = response.get("Item")
        if item is None or self._expired(item):
            raise UnknownGroupError(f"unknown group {group_uuid} (never initialised, purged or expired)")
        return item

    def group_states(self, group_uuid: str) -> list[TaskState]:
        """Every member's state in group order (PENDING for a member with no state yet)."""
        members = [entry["S"] for entry in self._group_item(group_uuid).get("TaskUUIDs", {}).get("L", [])]
        items = self._get_many(self.states_table, "TaskUUID", members)
        return [self._state_from_item(items[u]) if u in items else TaskState(u) for u in members]

    def trigger_chord(self, group_uuid: str) -> bool:
        """True exactly once per group: a conditional update of ``ChordTriggered`` from false to true."""
        triggered = self._tables.conditional(
            "update_item",
            self.groups_table,
            f"chord of {group_uuid}",
            TableName=self.groups_table,
            Key={"GroupUUID": {"S": group_uuid}},
            UpdateExpression="SET ChordTriggered = :yes",
            ConditionExpression=(
                "attribute_exists(GroupUUID) AND ChordTriggered = :no AND "
                "(attribute_not_exists(#t) OR #t > :now)"  # no TTL: results never expire
            ),
            ExpressionAttributeNames={"#t": "TTL"},
            ExpressionAttributeValues={
                ":yes": {"BOOL": True},
                ":no": {"BOOL": False},
                ":now": {"N": str(int(time.time()))},
            },
        )
        if triggered:
            return True
        self._group_item(group_uuid)  # raises UnknownGroupError for a missing or expired group
        return False

    # -- purge ---------------------------------------------------------------------------------------
    def purge_state(self, task_uuid: str) -> None:
        self._call(
            "delete_item", self.states_table, TableName=self.states_table, Key={"TaskUUID": {"S": task_uuid}}
        )

    def purge_group(self, group_uuid: str) -> None:
        self._call(
            "delete_item",
            self.groups_table,
            TableName=self.groups_table,
            Key={"GroupUUID": {"S": group_uuid}},
        )

    def close(self) -> None:
        """Release the HTTP connections and the update threads. Idempotent."""
        executor, self._executor = self._executor, None
        if executor is not None and self._executor_pid == os.getpid():
            executor.shutdown(wait=True)
        self._tables.close()
