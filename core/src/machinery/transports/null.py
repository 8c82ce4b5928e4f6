"""Go Machinery's ``null`` result backend: results are discarded.

``Config(result_backend="null")`` (Go matches the word by prefix) sends tasks without storing any state.
Reading a result raises :class:`NoResultBackendError` at once, and groups, chords and chains are refused
when sent: they need stored results to move on (Go's null backend fires every chord at once instead).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..backend import BaseBackend
from ..config import Config
from ..errors import BackendError
from ..signature import TaskState

__all__ = ["NoResultBackendError", "NullBackend"]

_HINT = "Config.result_backend is 'null' (Go's discard-everything backend): set a real one to read results"


class NoResultBackendError(BackendError):
    """The app has no result backend, so there is no result to read or wait for."""


class NullBackend(BaseBackend):
    """Stores nothing. States are dropped; reads fail with a clear :class:`NoResultBackendError`."""

    #: results are discarded: workflows that need them are refused at send time
    discards_results = True

    @classmethod
    def from_url(cls, url: str, config: Config) -> NullBackend:
        return cls(config)

    def set_state(self, state: TaskState) -> None:
        return None

    def set_states(self, states: Sequence[TaskState]) -> None:
        return None

    def get_state(self, task_uuid: str) -> TaskState | None:
        raise NoResultBackendError(f"no result for task {task_uuid}: {_HINT}")

    def wait(self, task_uuids: Sequence[str], timeout: float) -> dict[str, TaskState]:
        raise NoResultBackendError(f"cannot wait for results: {_HINT}")

    def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        raise NoResultBackendError(f"groups, chords and chains need stored results: {_HINT}")

    def group_states(self, group_uuid: str) -> list[TaskState]:
        raise NoResultBackendError(f"no group states: {_HINT}")

    def trigger_chord(self, group_uuid: str) -> bool:
        raise NoResultBackendError(f"chords need stored results: {_HINT}")

    def purge_state(self, task_uuid: str) -> None:
        return None

    def purge_group(self, group_uuid: str) -> None:
        return None
