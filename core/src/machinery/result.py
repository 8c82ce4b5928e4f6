"""Results: wait for a task, a group, a chord or a chain. Every wait has a timeout."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from . import codec
from .errors import ResultNotReady, ResultTimeoutError, TaskError
from .signature import State, TaskState

if TYPE_CHECKING:
    from .backend import Backend

__all__ = ["AsyncResult", "ChainResult", "ChordResult", "GroupResult"]

#: ``get(timeout=None)`` waits in slices of this many seconds (never a hot loop).
_WAIT_SLICE = 5.0


def _backend_of(source: Any) -> Backend:
    return source.backend if hasattr(source, "send_task") else source  # type: ignore[no-any-return]


class _Deadline:
    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.end = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float:
        if self.end is None:
            return _WAIT_SLICE
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end


def _raise_failure(state: TaskState) -> None:
    raise TaskError(state.error, task_uuid=state.task_uuid, task_name=state.task_name)


class AsyncResult:
    """The result of one sent task (Machinery's ``AsyncResult``).

    ``AsyncResult(app, "task_uuid")`` rebuilds one from a stored uuid.
    """

    def __init__(self, app_or_backend: Any, uuid: str, name: str = "") -> None:
        self.backend: Backend = _backend_of(app_or_backend)
        self.uuid = uuid
        self.name = name
        self._final: TaskState | None = None

    def _fetch(self) -> TaskState | None:
        if self._final is not None:
            return self._final
        state = self.backend.get_state(self.uuid)
        if state is not None and state.is_completed:
            self._final = state
        return state

    @property
    def state(self) -> State:
        """The current state; PENDING when the backend has none (yet)."""
        current = self._fetch()
        return current.state if current is not None else State.PENDING

    @property
    def task_state(self) -> TaskState | None:
        """The full stored record, or None when unknown."""
        return self._fetch()

    def ready(self) -> bool:
        """True once the task is SUCCESS or FAILURE."""
        current = self._fetch()
        return current is not None and current.is_completed

    def successful(self) -> bool:
        return self.state is State.SUCCESS

    def failed(self) -> bool:
        return self.state is State.FAILURE

    def touch(self) -> Any:
        """Go's ``Touch()``: never blocks. The value when the task is SUCCESS; raises
        :class:`~machinery.errors.TaskError` for FAILURE and
        :class:`~machinery.errors.ResultNotReady` while it is not finished (or unknown)."""
        current = self._fetch()
        if current is None or not current.is_completed:
            state = current.state.value if current is not None else "unknown"
            raise ResultNotReady(f"task {self.uuid} is not finished (state {state})")
        if current.is_failure:
            _raise_failure(current)
        return codec.values_from_results(current.results)

    def wait_state(self, timeout: float | None = None) -> TaskState:
        """Block until the task is completed and return its record (SUCCESS or FAILURE).

        Raises :class:`~machinery.errors.ResultTimeoutError` after ``timeout`` seconds.
        """
        deadline = _Deadline(timeout)
        while self._final is None:
            found = self.backend.wait([self.uuid], deadline.remaining())
            if self.uuid in found:
                self._final = found[self.uuid]
            elif deadline.expired():
                raise ResultTimeoutError(
                    f"task {self.uuid} not finished after {timeout}s (state {self.state.value})"
                )
        return self._final

    def get(self, timeout: float | None = None) -> Any:
        """The task's return value: one value, a tuple when it returned several, None for none.

        Raises :class:`~machinery.errors.TaskError` (``str()`` = the task's error text) on
        FAILURE, and :class:`~machinery.errors.ResultTimeoutError` after ``timeout`` seconds.
        """
        state = self.wait_state(timeout)
        if state.is_failure:
            _raise_failure(state)
        return codec.values_from_results(state.results)

    def __repr__(self) -> str:
        return f"<AsyncResult {self.name or ''} {self.uuid}>"


class GroupResult(list[AsyncResult]):
    """The members' results, in group order; ``get()`` returns every member's value."""

    def __init__(self, results: list[AsyncResult], group_uuid: str) -> None:
        super().__init__(results)
        self.group_uuid = group_uuid

    def ready(self) -> bool:
        return all(r.ready() for r in self)

    def get(self, timeout: float | None = None) -> list[Any]:
        """Every member's value in group order; raises the first failure found."""
        deadline = _Deadline(timeout)
        return [r.get(timeout=None if timeout is None else deadline.remaining()) for r in self]


class ChordResult(AsyncResult):
    """The chord callback's result. ``get()`` raises :class:`TaskError` naming the failed member
    when a member failed (the callback then never runs)."""

    def __init__(self, app_or_backend: Any, group: GroupResult, callback_uuid: str, name: str = "") -> None:
        super().__init__(app_or_backend, callback_uuid, name)
        self.group = group

    def get(self, timeout: float | None = None) -> Any:
        deadline = _Deadline(timeout)
        for member in self.group:
            state = member.wait_state(None if timeout is None else deadline.remaining())
            if state.is_failure:
                raise TaskError(
                    f"chord member {state.task_name or member.name} ({member.uuid}) failed: {state.error}",
                    task_uuid=member.uuid,
                    task_name=state.task_name,
                )
        return super().get(None if timeout is None else deadline.remaining())


class ChainResult(AsyncResult):
    """The last task's result; ``get()`` raises at the first failing link instead of waiting."""

    def __init__(self, app_or_backend: Any, links: list[AsyncResult]) -> None:
        super().__init__(app_or_backend, links[-1].uuid, links[-1].name)
        self.links = links

    def get(self, timeout: float | None = None) -> Any:
        deadline = _Deadline(timeout)
        for link in self.links[:-1]:
            state = link.wait_state(None if timeout is None else deadline.remaining())
            if state.is_failure:
                _raise_failure(state)
        return super().get(None if timeout is None else deadline.remaining())
