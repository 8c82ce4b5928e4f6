"""``HostileInputContract``: hostile raw messages and misbehaving tasks against one worker.

Every case puts one hostile message on the queue (raw bytes, through the ``publish_raw`` fixture)
and checks three things:

1. the hostile message ends within seconds: FAILURE (or the outcome its case names: a huge but
   valid message may succeed) stored under its uuid, or dead-lettered when it has no readable uuid
   (or, for the hostile-uuid cases, one the result store cannot take as a key);
2. the task body ran at most once;
3. the worker still serves a canary ``add(1, 1)`` sent right after it.

All cases run one after another against **one** worker (concurrency 2), so the contract costs
seconds, not minutes; it ends by checking the worker still runs two tasks at once (no slot lost).
Subclass it once per broker (not per broker/backend pairing)::

    class TestFooHostile(HostileInputContract):
        broker_url = ...; backend_url = ...   # fixtures, as for the other contracts
"""

from __future__ import annotations

import decimal
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest

from ..app import Machinery
from ..capabilities import Capability
from ..errors import MessageError
from ..signature import Signature, new_uuid
from ._util import RunLog, unique
from .tasks import make_app
from .worker_contract import RunningWorker, _WorkerBase

__all__ = ["HOSTILE_CASES", "HostileCase", "HostileInputContract"]

DROP = object()
"""A field value meaning: leave the key out of the message."""

#: outcomes a case may expect
FAILURE, SUCCESS, RETRY, PENDING, DEAD = "FAILURE", "SUCCESS", "RETRY", "PENDING", "dead"


@dataclass(frozen=True)
class HostileCase:
    """One hostile message. ``body(uuid, key)`` builds the raw bytes; ``outcomes`` are the accepted
    ends (a state name, or ``dead`` for a message without a readable uuid); ``error`` a substring the
    FAILURE's error must contain."""

    name: str
    group: str
    body: Callable[[str, str], bytes]
    outcomes: tuple[str, ...] = (FAILURE,)
    error: str = ""
    #: the message's uuid made from a fresh one (a hostile uuid); None keeps it
    uuid: Callable[[str], str] | None = None


def _message(uuid: str, key: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "UUID": uuid,
        "Name": "record",
        "Args": [{"Type": "string", "Value": key}],
    }
    for name, value in fields.items():
        if value is DROP:
            base.pop(name, None)
        else:
            base[name] = value
    return base


def _json(**fields: Any) -> Callable[[str, str], bytes]:
    """A message ``record(key)`` with ``fields`` replaced (NaN/Infinity written as JSON literals)."""
    return lambda uuid, key: json.dumps(_message(uuid, key, **fields)).encode()


def _raw(template: str) -> Callable[[str, str], bytes]:
    """Raw text with ``{uuid}`` and ``{key}`` filled in (for what json.dumps cannot write)."""
    return lambda uuid, key: template.replace("{uuid}", uuid).replace("{key}", key).encode("utf-8")


def _bytes(data: bytes) -> Callable[[str, str], bytes]:
    return lambda uuid, key: data


def _task(name: str, *args: Any, **fields: Any) -> Callable[[str, str], bytes]:
    """A message calling the hostile task ``name`` with ``key`` first, then ``args``."""

    def body(uuid: str, key: str) -> bytes:
        typed = [{"Type": "string", "Value": key}] + [{"Type": "json", "Value": a} for a in args]
        return json.dumps(_message(uuid, key, Name=name, Args=typed, **fields)).encode()

    return body


def _arg(type_: str, value: Any) -> Callable[[str, str], bytes]:
    """``record(key)`` plus one extra argument of Go type ``type_``."""
    return lambda uuid, key: json.dumps(
        _message(uuid, key, Args=[{"Type": "string", "Value": key}, {"Type": type_, "Value": value}])
    ).encode()


def _deep_chord(depth: int) -> Callable[[str, str], bytes]:
    def body(uuid: str, key: str) -> bytes:
        inner = f'{{"UUID":"{uuid}","Name":"record","Args":[{{"Type":"string","Value":"{key}"}}]'
        return (inner + ',"ChordCallback":{"Name":"add"' * depth + "}" * depth + "}").encode()

    return body


def _deep_arg(depth: int) -> Callable[[str, str], bytes]:
    return _raw(
        '{"UUID":"{uuid}","Name":"record","Args":[{"Type":"string","Value":"{key}"},'
        '{"Type":"json","Value":' + "[" * depth + "]" * depth + "}]}"
    )


_UNREGISTERED = "is not registered"
_ORPHAN = "unknown or expired"

HOSTILE_CASES: tuple[HostileCase, ...] = (
    # not JSON
    HostileCase("empty body", "not JSON", _bytes(b""), (DEAD,)),
    HostileCase("plain text", "not JSON", _bytes(b"hello, worker"), (DEAD,)),
    HostileCase("NUL bytes", "not JSON", _bytes(b"\x00\x01\x02"), (DEAD,)),
    HostileCase("open brace", "not JSON", _bytes(b"{"), (DEAD,)),
    HostileCase("truncated object", "not JSON", _raw('{"UUID":"{uuid}","Name":"record"'), (DEAD,)),
    HostileCase("a JSON array", "not JSON", _bytes(b"[1, 2, 3]"), (DEAD,)),
    HostileCase("a JSON string", "not JSON", _bytes(b'"record"'), (DEAD,)),
    # not UTF-8
    HostileCase("invalid UTF-8 only", "not UTF-8", _bytes(b"\xff\xfe\xfd"), (DEAD,)),
    HostileCase(
        "invalid UTF-8 in the name",
        "not UTF-8",
        lambda uuid, key: b'{"UUID":"' + uuid.encode() + b'","Name":"rec\xffrd"}',
        error=_UNREGISTERED,
    ),
    HostileCase(
        "invalid UTF-8 in an argument",
        "not UTF-8",
        lambda uuid, key: (
            b'{"UUID":"'
            + uuid.encode()
            + b'","Name":"record","Args":[{"Type":"string","Value":"'
            + key.encode()
            + b'\xc3\x28"}]}'
        ),
        (SUCCESS,),
    ),
    # wrong JSON types per field
    HostileCase("Name is a number", "wrong types", _json(Name=123)),
    HostileCase("Name is an array", "wrong types", _json(Name=["record"])),
    HostileCase("UUID is a number", "wrong types", _json(UUID=5), (DEAD,)),
    HostileCase("Args is an object", "wrong types", _json(Args={"Type": "string"})),
    HostileCase("Args is a string", "wrong types", _json(Args="key")),
    HostileCase("an Arg is a number", "wrong types", _json(Args=[5])),
    HostileCase("Headers is an array", "wrong types", _json(Headers=[1])),
    HostileCase("Kwargs is an array", "wrong types", _json(Kwargs=[1])),
    HostileCase("Priority is a string", "wrong types", _json(Priority="high")),
    HostileCase("RetryCount is a string", "wrong types", _json(RetryCount="3")),
    HostileCase("Immutable is a string", "wrong types", _json(Immutable="yes")),
    HostileCase("OnSuccess is an object", "wrong types", _json(OnSuccess={"Name": "add"})),
    HostileCase("ChordCallback is a string", "wrong types", _json(ChordCallback="add")),
    HostileCase("GroupTaskCount is a string", "wrong types", _json(GroupTaskCount="2")),
    HostileCase("ETA is a number", "wrong types", _json(ETA=12345)),
    # unknown argument types
    HostileCase("Type complex128", "unknown arg types", _arg("complex128", 1)),
    HostileCase("Type empty", "unknown arg types", _arg("", 1)),
    HostileCase("Type a Go map", "unknown arg types", _arg("map[string]int", {"a": 1})),
    HostileCase("Type is a number", "unknown arg types", _json(Args=[{"Type": 5, "Value": 1}])),
    # out-of-range integers
    HostileCase("int8 300", "out-of-range ints", _arg("int8", 300)),
    HostileCase("uint8 -1", "out-of-range ints", _arg("uint8", -1)),
    HostileCase("int64 2**63", "out-of-range ints", _arg("int64", 2**63)),
    HostileCase("uint64 2**64", "out-of-range ints", _arg("uint64", 2**64)),
    HostileCase("GroupTaskCount 2**64", "out-of-range ints", _json(GroupTaskCount=2**64)),
    # bad base64
    HostileCase("[]byte not base64", "bad base64", _arg("[]byte", "!!!not base64!!!")),
    HostileCase("[]uint8 bad padding", "bad base64", _arg("[]uint8", "YQ")),
    # NaN, Infinity, 1e999
    HostileCase("NaN argument", "NaN/Infinity", _arg("float64", float("nan"))),
    HostileCase("Infinity argument", "NaN/Infinity", _arg("json", float("inf"))),
    HostileCase("-Infinity kwarg", "NaN/Infinity", _json(Kwargs={"x": float("-inf")})),
    HostileCase(
        "1e999 argument",
        "NaN/Infinity",
        _raw('{"UUID":"{uuid}","Name":"record","Args":[{"Type":"float64","Value":1e999}]}'),
    ),
    HostileCase(
        "1e999 next to a long integer",
        "NaN/Infinity",
        _raw('{"UUID":"{uuid}","Name":"record","Kwargs":{"a":1e999,"b":123456789012345678901234}}'),
    ),
    # lone surrogates
    HostileCase(
        "lone surrogate uuid", "lone surrogates", _raw('{"UUID":"\\ud800","Name":"record"}'), (DEAD,)
    ),
    HostileCase(
        "lone surrogate argument",
        "lone surrogates",
        _raw('{"UUID":"{uuid}","Name":"record","Args":[{"Type":"string","Value":"{key}\\udc00"}]}'),
    ),
    HostileCase(
        "lone surrogate kwarg name",
        "lone surrogates",
        _raw('{"UUID":"{uuid}","Name":"record","Kwargs":{"\\ud800":1}}'),
    ),
    HostileCase("lone surrogate name", "lone surrogates", _raw('{"UUID":"{uuid}","Name":"\\udfff"}')),
    # deep nesting
    HostileCase("50,000 open brackets", "deep nesting", _bytes(b"[" * 50_000 + b"]" * 50_000), (DEAD,)),
    HostileCase("ChordCallback 995 deep", "deep nesting", _deep_chord(995), (FAILURE, DEAD)),
    HostileCase("argument nested 300 deep", "deep nesting", _deep_arg(300)),
    # huge strings and argument counts
    HostileCase(
        "10,000 arguments",
        "huge",
        lambda uuid, key: json.dumps(
            {"UUID": uuid, "Name": "add", "Args": [{"Type": "int64", "Value": 1}] * 10_000}
        ).encode(),
        (SUCCESS,),
    ),
    HostileCase(
        "a 1 MB error message",
        "huge",
        lambda uuid, key: json.dumps(
            {
                "UUID": uuid,
                "Name": "return_just_error",
                "Args": [{"Type": "string", "Value": "x" * 1_000_000}, {"Type": "bool", "Value": True}],
            }
        ).encode(),
    ),
    HostileCase(
        "20,000 unknown kwargs",
        "huge",
        lambda uuid, key: json.dumps(
            {"UUID": uuid, "Name": "add", "Kwargs": {f"k{i}": i for i in range(20_000)}}
        ).encode(),
    ),
    # bad ETAs
    HostileCase("ETA is a word", "bad ETAs", _json(ETA="tomorrow")),
    HostileCase("ETA month 13", "bad ETAs", _json(ETA="2025-13-45T00:00:00Z")),
    HostileCase("ETA past year 9999", "bad ETAs", _json(ETA="9999-12-31T23:59:59-23:59")),
    HostileCase("ETA with a 99 h offset", "bad ETAs", _json(ETA="2025-01-01T00:00:00+99:00")),
    # negative or huge RetryCount / RetryTimeout / Priority
    HostileCase(
        "RetryCount -5 on a failing task", "retry/priority", _json(Name="panic", Args=[], RetryCount=-5)
    ),
    HostileCase(
        "RetryTimeout 2**62",
        "retry/priority",
        _json(Name="panic", Args=[], RetryCount=1, RetryTimeout=2**62),
        (RETRY, PENDING),
    ),
    HostileCase(
        "RetryCount 2**62, RetryTimeout -7",
        "retry/priority",
        _json(Name="panic", Args=[], RetryCount=2**62, RetryTimeout=-7),
        (RETRY, PENDING),
    ),
    HostileCase("Priority -1", "retry/priority", _json(Priority=-1)),
    HostileCase("Priority 256", "retry/priority", _json(Priority=256)),
    HostileCase("Priority 2**70", "retry/priority", _json(Priority=2**70)),
    # missing, empty or non-string Name
    HostileCase("Name missing", "Name", _json(Name=DROP)),
    HostileCase("Name empty", "Name", _json(Name="")),
    HostileCase("Name null", "Name", _json(Name=None)),
    HostileCase("Name an object", "Name", _json(Name={"x": 1})),
    # unregistered and dunder names
    HostileCase("unregistered name", "unregistered", _json(Name="no_such_task"), error=_UNREGISTERED),
    HostileCase("dunder __init__", "unregistered", _json(Name="__init__"), error=_UNREGISTERED),
    HostileCase("dunder __class__", "unregistered", _json(Name="__class__"), error=_UNREGISTERED),
    HostileCase("a module path", "unregistered", _json(Name="os.system"), error=_UNREGISTERED),
    # bad headers
    HostileCase(
        "unregistered-count not a number",
        "bad headers",
        _json(Name="no_such_task", Headers={"machinery-unregistered-count": "abc"}),
        error=_UNREGISTERED,
    ),
    HostileCase(
        "unregistered-count negative",
        "bad headers",
        _json(Name="no_such_task", Headers={"machinery-unregistered-count": "-50"}),
        error=_UNREGISTERED,
    ),
    HostileCase(
        "unregistered-since inf",
        "bad headers",
        _json(Name="no_such_task", Headers={"machinery-unregistered-since": "inf"}),
        error=_UNREGISTERED,
    ),
    HostileCase(
        "unregistered-since nan",
        "bad headers",
        _json(Name="no_such_task", Headers={"machinery-unregistered-since": "nan"}),
        error=_UNREGISTERED,
    ),
    HostileCase(
        "unregistered-count an object",
        "bad headers",
        _json(Name="no_such_task", Headers={"machinery-unregistered-count": {"a": 1}}),
        error=_UNREGISTERED,
    ),
    HostileCase(
        "deliveries header huge",
        "bad headers",
        _json(Headers={"machinery-deliveries": "99999999999999999999999"}),
        error="gave up",
    ),
    HostileCase(
        "deliveries header garbage", "bad headers", _json(Headers={"machinery-deliveries": "x"}), (SUCCESS,)
    ),
    # chord members of unknown groups
    HostileCase(
        "chord member of an unknown group",
        "chords",
        _json(GroupUUID="group_that_never_was", GroupTaskCount=2, ChordCallback={"Name": "add"}),
        error=_ORPHAN,
    ),
    HostileCase(
        "chord member, group count 0",
        "chords",
        _json(GroupUUID="group_that_never_was", GroupTaskCount=0, ChordCallback={"Name": "add"}),
        error=_ORPHAN,
    ),
    # tasks that return unencodable values, exit, or break a handler
    HostileCase(
        "returns a datetime", "bad tasks", _task("hostile_datetime"), error="not JSON-serialisable: datetime"
    ),
    HostileCase("returns a set", "bad tasks", _task("hostile_set"), error="not JSON-serialisable: set"),
    HostileCase(
        "returns a Decimal", "bad tasks", _task("hostile_decimal"), error="not JSON-serialisable: Decimal"
    ),
    HostileCase("returns NaN", "bad tasks", _task("hostile_nan"), error="not JSON-serialisable: nan"),
    HostileCase(
        "returns a lone surrogate", "bad tasks", _task("hostile_surrogate"), error="not JSON-serialisable"
    ),
    HostileCase("calls sys.exit", "bad tasks", _task("hostile_exit"), error="SystemExit"),
    HostileCase(
        "raises KeyboardInterrupt", "bad tasks", _task("hostile_interrupt"), error="KeyboardInterrupt"
    ),
    HostileCase("raises GeneratorExit", "bad tasks", _task("hostile_generator_exit"), error="GeneratorExit"),
    HostileCase(
        "error handler raises SystemExit", "bad tasks", _task("hostile_handler"), error="handler bomb"
    ),
    HostileCase("post-task handler raises", "bad tasks", _task("hostile_post"), (SUCCESS,)),
    # uuids a store may not take as a key: it stores the result, or the message is dead-lettered
    HostileCase(
        "UUID with braces", "hostile uuids", _json(), (SUCCESS, DEAD), uuid=lambda u: f"{u[:5]}{{{u[5:]}}}"
    ),
    HostileCase(
        "UUID with a space and a newline",
        "hostile uuids",
        _json(),
        (SUCCESS, DEAD),
        uuid=lambda u: u + " a\nb",
    ),
    HostileCase(
        "UUID of 1,000 characters",
        "hostile uuids",
        _json(),
        (SUCCESS, DEAD),
        uuid=lambda u: u.ljust(1000, "x"),
    ),
)

#: hostile tasks registered on the contract's worker (each records its run under its key)
_HANDLER_BOMB = "handler bomb"


def _hostile_tasks(runs: RunLog) -> dict[str, Callable[..., Any]]:
    def ran(key: str) -> None:
        runs.append(key, "run")

    def returning(value: Any) -> Callable[[str], Any]:
        def task(key: str) -> Any:
            ran(key)
            return value

        return task

    def raising(exc: BaseException) -> Callable[[str], Any]:
        def task(key: str) -> Any:
            ran(key)
            raise exc

        return task

    def exit_(key: str) -> None:
        ran(key)
        sys.exit(3)

    def rendezvous(key: str, parties: int) -> bool:
        """True when ``parties`` copies ran at the same time (the worker still has that many slots)."""
        runs.append(key, "arrive")
        deadline = time.monotonic() + 10
        while runs.count(key, "arrive") < parties:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    return {
        "hostile_datetime": returning(datetime(2025, 1, 1, tzinfo=UTC)),
        "hostile_set": returning({1, 2}),
        "hostile_decimal": returning(decimal.Decimal("1.5")),
        "hostile_nan": returning(float("nan")),
        "hostile_surrogate": returning("\ud800"),
        "hostile_exit": exit_,
        "hostile_interrupt": raising(KeyboardInterrupt()),
        "hostile_generator_exit": raising(GeneratorExit()),
        "hostile_handler": raising(RuntimeError(_HANDLER_BOMB)),
        "hostile_post": returning("fine"),
        "hostile_rendezvous": rendezvous,
    }


@dataclass
class _Verdict:
    problems: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


class HostileInputContract(_WorkerBase):
    """Hostile messages and misbehaving tasks, all against one thread worker. Needs the
    ``publish_raw`` fixture (the default uses the broker's ``publish_raw(queue, body)``)."""

    #: seconds one hostile message may take to end (unregistered names bounce a few times first)
    hostile_case_timeout: ClassVar[float] = 15.0
    hostile_concurrency: ClassVar[int] = 2

    def _hostile_worker(self) -> tuple[Machinery, Machinery]:
        """(producer, worker app); the worker runs in a thread of this process with the hostile tasks
        and handlers that raise."""
        config = self.app_config(max_deliveries=3)
        app = make_app(
            config=config,
            runlog=str(self.runlog.dir),
            broker=self.make_broker(self.urls["broker"], config),
            backend=self.make_backend(self.urls["backend"], config),
        )
        for name, fn in _hostile_tasks(self.runlog).items():
            app.register_task(name, fn)
        worker = app.worker(unique("hostile"), concurrency=self.hostile_concurrency, queue=self.task_queue)

        def on_error(exc: BaseException) -> None:
            if _HANDLER_BOMB in str(exc):
                raise SystemExit("an error handler exiting")

        def post_task(sig: Signature) -> None:
            if sig.name == "hostile_post":
                raise RuntimeError("a post-task handler failing")

        worker.set_error_handler(on_error)
        worker.set_post_task_handler(post_task)
        thread = worker.launch_async()

        def wait() -> None:
            thread.join(self.t(20))
            app.close()

        self._started(RunningWorker("thread", worker.consumer_tag, worker.quit, wait, app=app))
        deadline = time.monotonic() + self.t(10)
        while not worker.running and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.producer(config), app

    def _dead_lettered(self, app: Machinery, body: bytes) -> bool | None:
        """True once ``body`` is in the broker's dead letters; None when the broker cannot list them."""
        reader = getattr(app.broker, "dead_letters", None)
        if Capability.DEAD_LETTER not in getattr(app.broker, "capabilities", ()) or reader is None:
            return None
        return body in [bytes(getattr(x, "body", x)) for x in reader(self.task_queue)]

    def _check_case(self, case: HostileCase, producer: Machinery, verdict: _Verdict) -> None:
        uuid, key = new_uuid(), unique("hostile")
        if case.uuid is not None:
            uuid = case.uuid(uuid)
        body = case.body(uuid, key)
        started = time.monotonic()
        self.need("publish_raw", self._publish_raw)(self.task_queue, body)
        canary = producer.send_task(Signature("add", args=[1, 1]))
        problem = self._outcome(case, producer, uuid, body)
        try:
            value = canary.get(timeout=self.t(self.hostile_case_timeout))
        except Exception as exc:
            pytest.fail(
                f"hostile case {case.name!r} ({case.group}): the worker no longer serves tasks: {exc}"
            )
        if value != 2:
            problem = problem or f"the canary returned {value!r}"
        runs = self.runlog.count(key, "run") + self.runlog.count(key, "done")
        if runs > 1:
            problem = problem or f"the task body ran {runs} times"
        verdict.seconds[case.name] = time.monotonic() - started
        if problem:
            verdict.problems.append(f"{case.group} / {case.name}: {problem}")

    @staticmethod
    def _uuid_readable(body: bytes) -> bool:
        from ..worker.worker import _uuid_from_body

        return bool(_uuid_from_body(body))

    def _outcome(self, case: HostileCase, producer: Machinery, uuid: str, body: bytes) -> str:
        """'' when the message ended as the case expects within the timeout, else what went wrong."""
        deadline = time.monotonic() + self.t(self.hostile_case_timeout)
        if DEAD in case.outcomes and not self._uuid_readable(body):
            while time.monotonic() < deadline:
                dead = self._dead_lettered(producer, body)
                if dead is None or dead:
                    return ""  # a broker without a dead-letter listing: the canary check remains
                time.sleep(0.02)
            return "not dead-lettered within the timeout"
        state = None
        while time.monotonic() < deadline:
            if DEAD in case.outcomes and self._dead_lettered(producer, body):
                return ""  # a readable uuid the store could not take
            try:
                state = producer.backend.get_state(uuid)
            except MessageError:
                state = None  # a uuid this store refuses: only the dead letter can end it
            if state is not None and state.state.value in case.outcomes:  # PENDING: re-sent by a retry
                break
            time.sleep(0.02)
        else:
            got = "no state" if state is None else f"{state.state.value} ({state.error[:120]!r})"
            return f"did not end {'/'.join(case.outcomes)} within the timeout; last seen: {got}"
        assert state is not None
        if case.error and case.error not in state.error:
            return f"error {state.error[:200]!r} does not mention {case.error!r}"
        return ""

    @pytest.fixture(autouse=True)
    def _hostile_setup(self, _worker_setup: None, publish_raw: Any) -> None:
        self._publish_raw = publish_raw

    def test_hostile_inputs_never_wedge_the_worker(self) -> None:
        self.need("publish_raw", self._publish_raw)
        producer, _ = self._hostile_worker()
        verdict = _Verdict()
        started = time.monotonic()
        for case in HOSTILE_CASES:
            self._check_case(case, producer, verdict)
        # every slot survived: two tasks must run at the same time
        key = unique("rendezvous")
        pair = [producer.send_task(Signature("hostile_rendezvous", args=[key, 2])) for _ in range(2)]
        together = [r.get(timeout=self.t(20)) for r in pair]
        elapsed = time.monotonic() - started
        slowest = sorted(verdict.seconds.items(), key=lambda kv: -kv[1])[:3]
        self.record(
            "hostile inputs",
            f"{len(HOSTILE_CASES)} cases in {elapsed:.1f} s; slowest: "
            + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in slowest),
        )
        assert together == [True, True], "the worker lost a slot: two tasks no longer run at once"
        assert not verdict.problems, (
            f"{len(verdict.problems)} of {len(HOSTILE_CASES)} hostile cases failed:\n"
            + "\n".join(verdict.problems)
        )
