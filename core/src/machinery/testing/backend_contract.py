"""``BackendContract``: states, results, wait, groups, exactly-once chords, expiry, purge."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any, ClassVar

import pytest

from .. import codec
from ..backend import Backend
from ..capabilities import Capability
from ..config import NEVER_EXPIRE
from ..errors import UnknownGroupError
from ..signature import Arg, State, TaskState, new_uuid, now_utc
from ._base import ContractBase, requires
from ._util import Child, eventually, median, ms

__all__ = ["RESULT_VALUES", "BackendContract"]

NAME = "contract_backend_task"

#: Values every backend must store and give back unchanged, with their inferred wire types.
RESULT_VALUES: list[Any] = [
    0,
    1,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    2**100,
    -(2**100),
    0.5,
    -1.25e300,
    1e-300,
    "",
    "plain",
    'unicode ☃ 日本語 Ωμέγα 🎉 " \\ \n\t',
    "x" * 100_000,
    True,
    False,
    [1, 2, 3],
    [2**64 - 1, 1],
    [0.5, 1.5],
    ["a", "b"],
    [True, False],
    b"\x00\x01binary\xff",
    {"k": [1, {"x": None}], "ü": "ß", "big": 2**70},
    [],
    [[1, 2], [3]],
    [1, "a", None],
]


class BackendContract(ContractBase):
    """Subclass with a ``backend_url`` fixture (or override ``make_backend``).

    ``push_wait_bound``: a backend declaring ``push_wait`` must wake ``wait()`` within this many
    seconds of the state landing, in at least 8 of 10 tries. ``None`` (default) means a quarter of
    the backend's ``poll_interval`` (0.2 s when it has none), and never more than 50 ms.
    ``chord_groups`` / ``chord_threads``: size of the exactly-once race.
    """

    push_wait_bound: ClassVar[float | None] = None
    chord_groups: ClassVar[int] = 200
    chord_threads: ClassVar[int] = 16

    @pytest.fixture
    def backend(self) -> Backend:
        backend: Backend = self._maybe_new("backend")
        return backend

    # states ------------------------------------------------------------------------------------
    def test_backend_state_transitions(self, backend: Backend) -> None:
        uuid = new_uuid()
        created = (now_utc() - timedelta(minutes=5)).replace(microsecond=123000)
        backend.set_state(TaskState(uuid, State.PENDING, task_name=NAME, created_at=created))

        def check(state: State) -> TaskState:
            got = backend.get_state(uuid)
            assert got is not None, f"no state after storing {state}"
            assert got.state == state
            assert got.task_uuid == uuid
            assert got.task_name == NAME, f"task name lost at {state}: {got.task_name!r}"
            assert got.created_at is not None, f"created_at lost at {state}"
            assert abs((got.created_at - created).total_seconds()) < 0.001, f"created_at changed at {state}"
            return got

        check(State.PENDING)
        for state in (State.RECEIVED, State.STARTED):
            backend.set_state(TaskState(uuid, state))
            assert not check(state).is_completed
        backend.set_state(TaskState(uuid, State.RETRY, error="try again"))
        assert check(State.RETRY).error == "try again"
        backend.set_state(TaskState(uuid, State.STARTED))
        check(State.STARTED)
        backend.set_state(TaskState(uuid, State.SUCCESS, results=[Arg(3, "int64")]))
        done = check(State.SUCCESS)
        assert done.is_completed and done.values == [3]

        failed = new_uuid()
        backend.set_state(TaskState(failed, State.PENDING, task_name=NAME, created_at=created))
        backend.set_state(TaskState(failed, State.STARTED))
        backend.set_state(TaskState(failed, State.FAILURE, error="Test error"))
        got = backend.get_state(failed)
        assert got is not None and got.state == State.FAILURE and got.is_completed
        assert got.error == "Test error"
        assert got.task_name == NAME

    def test_backend_unknown_uuid(self, backend: Backend) -> None:
        assert backend.get_state(new_uuid()) is None
        start = time.monotonic()
        assert backend.wait([new_uuid()], 0.3) == {}
        elapsed = time.monotonic() - start
        assert 0.25 <= elapsed <= 0.3 + self.t(2), f"wait(timeout=0.3) on an unknown uuid took {ms(elapsed)}"

    def test_backend_results_round_trip(self, backend: Backend) -> None:
        uuids = {}
        for value in RESULT_VALUES:
            uuid = new_uuid()
            uuids[uuid] = value
            backend.set_state(TaskState(uuid, State.SUCCESS, NAME, results=codec.results_from_return(value)))
        multi = new_uuid()
        backend.set_state(
            TaskState(multi, State.SUCCESS, NAME, results=codec.results_from_return(("foo", "bar")))
        )
        empty = new_uuid()
        backend.set_state(TaskState(empty, State.SUCCESS, NAME, results=None))
        for uuid, value in uuids.items():
            got = backend.get_state(uuid)
            assert got is not None
            assert got.results is not None and len(got.results) == 1
            back = got.results[0]
            assert back.value == value and type(back.value) is type(value), (
                f"{value!r:.60} came back as {back.value!r:.60}"
            )
            assert back.type == codec.infer_type(value), (
                f"type of {value!r:.60}: {back.type} != {codec.infer_type(value)}"
            )
        got_multi = backend.get_state(multi)
        assert got_multi is not None and got_multi.values == ["foo", "bar"]
        got_empty = backend.get_state(empty)
        assert got_empty is not None and codec.values_from_results(got_empty.results) is None

    def test_backend_set_states_batch(self, backend: Backend) -> None:
        states = [TaskState(new_uuid(), State.PENDING, NAME) for _ in range(20)]
        backend.set_states(states)
        for state in states:
            got = backend.get_state(state.task_uuid)
            assert got is not None and got.state == State.PENDING and got.task_name == NAME

    # wait --------------------------------------------------------------------------------------
    def measure_wakes(self, tries: int) -> list[float]:
        """Block a waiter (its own backend object) on a new uuid, store SUCCESS from another
        object, and return how long after the write the waiter woke, for each try."""
        writer = self.new_backend()
        waiter_backend = self.new_backend()
        latencies: list[float] = []
        for _ in range(tries):
            uuid = new_uuid()
            result: list[tuple[float, dict[str, TaskState]]] = []
            waiting = threading.Event()

            def wait(
                u: str = uuid,
                out: list[tuple[float, dict[str, TaskState]]] = result,
                ready: threading.Event = waiting,
            ) -> None:
                ready.set()
                found = waiter_backend.wait([u], self.t(10))
                out.append((time.monotonic(), found))

            thread = threading.Thread(target=wait)
            thread.start()
            assert waiting.wait(self.t(5))
            time.sleep(0.03)  # let the waiter block: part of the measurement, not synchronisation
            written = time.monotonic()
            writer.set_state(TaskState(uuid, State.SUCCESS, NAME, results=[Arg(1, "int64")]))
            thread.join(self.t(15))
            assert result, "wait() did not return"
            woke, found = result[0]
            assert uuid in found, "wait() returned without the completed state"
            assert found[uuid].values == [1]
            latencies.append(woke - written)
        return latencies

    def test_backend_wait_wakes_after_state_lands(self, backend: Backend) -> None:
        latencies = self.measure_wakes(6)
        push = Capability.PUSH_WAIT in getattr(backend, "capabilities", ())
        self.record(
            "wait wake latency",
            f"median {ms(median(latencies))}, max {ms(max(latencies))} over {len(latencies)} wakes"
            f" (push_wait {'declared' if push else 'not declared'})",
        )
        assert median(latencies) < self.t(1.0), (
            f"wait() woke a median {median(latencies):.2f}s after the write"
        )

    def test_backend_wait_several_and_partial(self, backend: Backend) -> None:
        first, second = new_uuid(), new_uuid()
        backend.set_state(TaskState(first, State.SUCCESS, NAME))
        start = time.monotonic()
        found = backend.wait([first, second], 0.5)
        elapsed = time.monotonic() - start
        assert set(found) == {first}, "wait() must return the completed states found when it times out"
        assert 0.45 <= elapsed <= 0.5 + self.t(2), f"wait(timeout=0.5) took {ms(elapsed)}"
        backend.set_state(TaskState(second, State.FAILURE, NAME, error="boom"))
        found = backend.wait([first, second], self.t(5))
        assert set(found) == {first, second}
        assert found[second].error == "boom"

    def push_bound(self, backend: Backend) -> float:
        if self.push_wait_bound is not None:
            return self.push_wait_bound
        poll = float(getattr(backend, "poll_interval", 0.2) or 0.2)
        return min(0.05, poll / 4)

    @requires(Capability.PUSH_WAIT, of="backend")
    def test_backend_push_wait(self, backend: Backend) -> None:
        bound = self.push_bound(backend)
        latencies = self.measure_wakes(10)
        fast = sum(1 for x in latencies if x < bound)
        self.record("push wait", f"{fast}/10 wakes under {ms(bound)}; median {ms(median(latencies))}")
        assert fast >= 8, (
            f"push_wait is declared but only {fast} of 10 wakes came within {ms(bound)} of the write "
            f"(median {ms(median(latencies))}): that is polling"
        )

    # groups ------------------------------------------------------------------------------------
    def test_backend_group_completion(self, backend: Backend) -> None:
        group = new_uuid("group")
        a, b, c = (new_uuid() for _ in range(3))
        backend.init_group(group, [a, b, c])

        def completed() -> int:
            states = backend.group_states(group)
            assert [s.task_uuid for s in states] == [a, b, c], "group_states is not in group order"
            return sum(1 for s in states if s.is_completed)

        assert [s.state for s in backend.group_states(group)] == [State.PENDING] * 3
        assert completed() == 0
        backend.set_state(TaskState(a, State.PENDING, NAME))
        backend.set_state(TaskState(b, State.STARTED, NAME))
        assert completed() == 0
        backend.set_state(TaskState(a, State.SUCCESS, NAME))
        assert completed() == 1
        backend.set_state(TaskState(c, State.FAILURE, NAME, error="x"))
        assert completed() == 2, "FAILURE must count as completed"
        backend.set_state(TaskState(b, State.SUCCESS, NAME))
        assert completed() == 3
        assert [s.state for s in backend.group_states(group)] == [State.SUCCESS, State.SUCCESS, State.FAILURE]

    def test_backend_unknown_group(self, backend: Backend) -> None:
        group = new_uuid("group")
        with pytest.raises(UnknownGroupError) as info:
            backend.group_states(group)
        assert group in str(info.value), "the error should name the unknown group"
        try:
            fired = backend.trigger_chord(group)
        except UnknownGroupError:
            return
        pytest.fail(
            f"trigger_chord on an unknown group returned {fired!r}: it must raise UnknownGroupError (a "
            "chord callback never runs for a group whose members are unknown or expired)"
        )

    def test_backend_trigger_chord_once(self, backend: Backend) -> None:
        group = new_uuid("group")
        members = [new_uuid() for _ in range(2)]
        backend.init_group(group, members)
        backend.set_states([TaskState(u, State.SUCCESS, NAME) for u in members])
        answers = [backend.trigger_chord(group) for _ in range(4)]
        answers.append(self.new_backend().trigger_chord(group))
        assert answers == [True, False, False, False, False], (
            f"trigger_chord answered {answers}: it must be true exactly once per group"
        )

    def _chord_groups(self, backend: Backend) -> list[str]:
        groups = [new_uuid("group") for _ in range(self.chord_groups)]
        for group in groups:
            backend.init_group(group, [new_uuid()])
        return groups

    def test_backend_trigger_chord_race_threads(self, backend: Backend) -> None:
        groups = self._chord_groups(backend)
        backends = [self.new_backend() for _ in range(self.chord_threads)]
        wins: Counter[str] = Counter()
        errors: list[BaseException] = []
        mutex = threading.Lock()
        start = threading.Barrier(len(backends))

        def race(b: Backend) -> None:
            try:
                start.wait(30)
                for group in groups:
                    if b.trigger_chord(group):
                        with mutex:
                            wins[group] += 1
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=race, args=(b,)) for b in backends]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.t(120))
        assert not errors, f"trigger_chord raised: {errors[:3]!r}"
        self.assert_once(groups, wins)
        self.record(
            "chord race (threads)",
            f"{len(backends)} threads x {len(groups)} groups in {time.monotonic() - began:.2f}s",
        )

    @staticmethod
    def assert_once(groups: list[str], wins: Counter[str]) -> None:
        twice = {g: n for g, n in wins.items() if n > 1}
        never = [g for g in groups if wins[g] == 0]
        assert not twice, f"trigger_chord was true more than once for {len(twice)} groups"
        assert not never, f"trigger_chord was never true for {len(never)} groups"

    @requires(Capability.MULTI_PROCESS, of="backend")
    def test_backend_trigger_chord_race_processes(self, backend: Backend) -> None:
        url = self.need_url("backend")
        groups = self._chord_groups(backend)
        threads = max(1, self.chord_threads // 2)
        children = [
            Child(
                "machinery.testing.procs",
                {
                    "cmd": "chord-race",
                    "url": url,
                    "config": self.config,
                    "keys": groups,
                    "threads": threads,
                    "plugin_modules": list(self.plugin_modules),
                },
                self.workdir,
                f"chord-race-{i}",
            )
            for i in range(2)
        ]
        for child in children:
            self.closing(child.close)
        for child in children:
            child.expect("ready", self.t(30))
        began = time.monotonic()
        for child in children:
            child.send("go")
        wins: Counter[str] = Counter()
        for child in children:
            result = child.expect_json("result", self.t(180))
            assert not result["errors"], f"{child.name}: trigger_chord raised: {result['errors'][:3]}"
            wins.update(result["won"])
        self.assert_once(groups, wins)
        self.record(
            "chord race (processes)",
            f"2 processes x {threads} threads x {len(groups)} groups in {time.monotonic() - began:.2f}s",
        )

    # expiry and purge --------------------------------------------------------------------------
    @requires(Capability.EXPIRY, of="backend")
    def test_backend_expiry(self) -> None:
        """Results and groups stored with ``results_expire_in=1`` disappear; meanwhile those stored with
        ``NEVER_EXPIRE`` (-1), also one first written with the 1-second expiry, stay."""
        config = self.config_copy(results_expire_in=1)
        backend = self.new_backend(config)
        keeper = self.new_backend(self.config_copy(results_expire_in=NEVER_EXPIRE))
        kept, rewritten, kept_group = new_uuid(), new_uuid(), new_uuid("group")
        backend.set_state(TaskState(rewritten, State.STARTED, NAME))
        keeper.init_group(kept_group, [kept, rewritten])
        keeper.set_state(TaskState(kept, State.SUCCESS, NAME, results=[Arg(2, "int64")]))
        keeper.set_state(TaskState(rewritten, State.SUCCESS, NAME, results=[Arg(3, "int64")]))
        uuid, group = new_uuid(), new_uuid("group")
        backend.init_group(group, [uuid])
        backend.set_state(TaskState(uuid, State.SUCCESS, NAME, results=[Arg(1, "int64")]))
        stored = time.monotonic()
        assert backend.get_state(uuid) is not None
        backend.group_states(group)

        def gone() -> bool:
            if backend.get_state(uuid) is not None:
                return False
            try:
                backend.group_states(group)
            except UnknownGroupError:
                return True
            return False

        eventually(gone, self.t(8), "a result and its group stored with results_expire_in=1 to expire")
        self.record("expiry (results_expire_in=1)", f"gone after {time.monotonic() - stored:.2f}s")
        assert backend.wait([uuid], 0.1) == {}
        # rewritten's first write had the same 1-second lifetime as uuid's, and came earlier
        states = keeper.group_states(kept_group)
        assert [s.state for s in states] == [State.SUCCESS, State.SUCCESS], (
            f"results stored with results_expire_in=-1 (never) expired: {states}"
        )
        assert [codec.values_from_results(s.results) for s in states] == [2, 3]
        assert keeper.trigger_chord(kept_group), "a group that never expires could not trigger its chord"

    def test_backend_purge(self, backend: Backend) -> None:
        uuid, group = new_uuid(), new_uuid("group")
        backend.set_state(TaskState(uuid, State.SUCCESS, NAME))
        backend.init_group(group, [uuid])
        backend.purge_state(uuid)
        assert backend.get_state(uuid) is None
        backend.purge_group(group)
        with pytest.raises(UnknownGroupError):
            backend.group_states(group)
        backend.purge_state(new_uuid())
        backend.purge_group(new_uuid("group"))

    def test_backend_close_is_idempotent(self) -> None:
        unused = self.new_backend()
        unused.close()
        unused.close()
        used = self.new_backend()
        used.set_state(TaskState(new_uuid(), State.PENDING, NAME))
        used.close()
        used.close()
