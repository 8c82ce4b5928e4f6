"""The Backend protocol: where task states, results and group records live."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .config import Config
from .signature import TaskState

__all__ = ["NEVER_HORIZON", "Backend", "BaseBackend"]

#: ``BaseBackend.expires_in`` when results never expire (30 days): only for what needs a finite
#: lifetime (the chord "sent" mark; task events and worker heartbeats of the event stores), never
#: written as a result's expiry.
NEVER_HORIZON = 30 * 24 * 3600


@runtime_checkable
class Backend(Protocol):
    """What every result backend implements. ``from_url(url, config)`` builds one without I/O.

    Errors: :class:`~machinery.errors.BackendError` for what may pass (a lost connection),
    :class:`~machinery.errors.PermanentError` for what retrying cannot fix (a result too large for
    the store, a record it refuses).

    States keep ``task_name`` and ``created_at`` across transitions (use
    :meth:`TaskState.merged_over`). Results expire ``config.results_expire_in`` seconds after
    their last write where the store supports expiry, and never when it is ``NEVER_EXPIRE`` (-1).
    """

    capabilities: frozenset[str]

    @classmethod
    def from_url(cls, url: str, config: Config) -> Backend:
        """A backend for ``url``; no I/O (connect on first use)."""

    def set_state(self, state: TaskState) -> None:
        """Store one task's state (replacing the previous one, keeping name and creation time)."""

    def set_states(self, states: Sequence[TaskState]) -> None:
        """Store several states, in one round trip where the store can."""

    def get_state(self, task_uuid: str) -> TaskState | None:
        """The task's current state, or ``None`` when the uuid is unknown or expired."""

    def wait(self, task_uuids: Sequence[str], timeout: float) -> dict[str, TaskState]:
        """Block until every task in ``task_uuids`` is completed (SUCCESS or FAILURE) or
        ``timeout`` seconds passed. Returns the completed states found, keyed by uuid.
        Backends declaring ``push_wait`` wake as soon as the state lands."""

    def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        """Record a group's members (in order) before they are sent."""

    def group_states(self, group_uuid: str) -> list[TaskState]:
        """Every member's state, in group order (PENDING for members with no state yet).
        Raises :class:`~machinery.errors.UnknownGroupError` for an unknown group."""

    def trigger_chord(self, group_uuid: str) -> bool:
        """True **exactly once** per group, across every process and thread that asks."""

    def purge_state(self, task_uuid: str) -> None:
        """Forget a task's state."""

    def purge_group(self, group_uuid: str) -> None:
        """Forget a group's record."""

    def close(self) -> None:
        """Release connections. Idempotent."""


class BaseBackend:
    """Shared behaviour for backends: config, expiry in seconds, a polling ``wait`` and a
    sequential ``set_states``. Subclasses override what their store does better."""

    capabilities: frozenset[str] = frozenset()
    #: seconds between polls in the default :meth:`wait`
    poll_interval: float = 0.05

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()

    @property
    def never_expires(self) -> bool:
        """True when ``results_expire_in`` is :data:`~machinery.config.NEVER_EXPIRE`: store no expiry."""
        return self.config.results_expire_in < 0

    @property
    def expires_in(self) -> int:
        """Result lifetime in seconds; 0 means Machinery's default of 3600. With :attr:`never_expires`
        backends write no expiry; this is then :data:`NEVER_HORIZON`, for what needs a finite lifetime
        (a lock marking a chord's callback as sent)."""
        seconds = self.config.results_expire_in
        if seconds < 0:
            return NEVER_HORIZON
        return seconds or 3600

    def expires_at(self, now: float) -> float:
        """When a result written at ``now`` (any clock, in seconds) expires: ``math.inf`` for never."""
        return math.inf if self.never_expires else now + self.expires_in

    def set_state(self, state: TaskState) -> None:
        raise NotImplementedError

    def get_state(self, task_uuid: str) -> TaskState | None:
        raise NotImplementedError

    def set_states(self, states: Sequence[TaskState]) -> None:
        for state in states:
            self.set_state(state)

    def wait(self, task_uuids: Sequence[str], timeout: float) -> dict[str, TaskState]:
        import time

        deadline = time.monotonic() + timeout
        done: dict[str, TaskState] = {}
        while True:
            for uuid in task_uuids:
                if uuid not in done:
                    state = self.get_state(uuid)
                    if state is not None and state.is_completed:
                        done[uuid] = state
            remaining = deadline - time.monotonic()
            if len(done) == len(set(task_uuids)) or remaining <= 0:
                return done
            time.sleep(min(self.poll_interval, remaining))

    def close(self) -> None:
        return None
