"""Exceptions raised by Machinery and the ones a task may raise to steer the worker."""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BrokerError",
    "ConfigError",
    "MachineryError",
    "MessageError",
    "NotRegisteredError",
    "PermanentError",
    "PluginNotFoundError",
    "ResultNotReady",
    "ResultTimeoutError",
    "Retry",
    "TaskError",
    "TimeLimitExceeded",
    "UnknownGroupError",
]


class MachineryError(Exception):
    """Base class of Machinery's own errors."""


class ConfigError(MachineryError, ValueError):
    """The configuration (a field, a URL, a YAML file) is invalid; the message says how to fix it."""


class PluginNotFoundError(ConfigError):
    """No installed plugin claims a URL's scheme; the message names the package to install."""


class BrokerError(MachineryError):
    """The broker failed in a way that may pass (unreachable, refused, timed out, a protocol error
    on a lost connection): retrying later can succeed. URLs in the message are redacted."""


class BackendError(MachineryError):
    """The result backend failed in a way that may pass (see :class:`BrokerError`). URLs in the
    message are redacted."""


class PermanentError(MachineryError):
    """What retrying cannot fix: a message or record that cannot be encoded, fails the store's
    validation, or exceeds a size limit. A broker or backend raises it instead of (never as a
    subclass of) :class:`BrokerError` / :class:`BackendError`, which stay the transient errors:
    callers retry those and fail (or dead-letter) on this one at once."""


class UnknownGroupError(BackendError, KeyError):
    """The group uuid is not known to the backend (never initialised, purged or expired)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown group"


class ResultTimeoutError(MachineryError, TimeoutError):
    """``AsyncResult.get(timeout=...)`` ran out of time before the task finished."""


class ResultNotReady(MachineryError):  # noqa: N818 - Go's "not ready" check, read as a state
    """``AsyncResult.touch()`` found the task not finished yet (so a ``None`` result is never mistaken
    for "not ready")."""


class NotRegisteredError(MachineryError, LookupError):
    """No task is registered under this name in this process."""


class TaskError(MachineryError):
    """The task ended in FAILURE. ``str(exc)`` is exactly the task's error text."""

    def __init__(self, message: str, *, task_uuid: str = "", task_name: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.task_uuid = task_uuid
        self.task_name = task_name

    def __str__(self) -> str:
        return self.message


class Retry(Exception):  # noqa: N818 - the name users raise, like Machinery's ErrRetryTaskLater
    """Raise inside a task to run it again in ``countdown`` seconds (Go's ``ErrRetryTaskLater``).

    It has a budget of its own, separate from the signature's ``retry_count`` (the budget for
    failures): at most ``max_retries`` retries-later per task (default
    ``Config.worker.retry_later_limit``, 100), counted in the ``machinery-retry-later`` header. Then
    the task fails with ``message`` (or "retry-later limit reached"). Never unbounded (Go #640)::

        @app.task
        def wait_for_report(report_id: str) -> str:
            if not storage.exists(report_id):
                raise Retry(countdown=30, max_retries=20)  # up to 10 minutes
            return storage.url(report_id)
    """

    def __init__(self, countdown: float = 0.0, message: str = "", max_retries: int | None = None) -> None:
        super().__init__(message or f"Task will retry in {countdown}s")
        self.countdown = countdown
        self.message = message
        self.max_retries = max_retries


class TimeLimitExceeded(Exception):  # noqa: N818 - reads as what happened
    """Raised inside a task whose soft time limit ran out; the task fails with "time limit exceeded"."""

    def __init__(self, message: str = "time limit exceeded") -> None:
        super().__init__(message)


class MessageError(PermanentError, ValueError):
    """A message or record could not be decoded (bad JSON, missing field, wrong argument type):
    permanent, since the same bytes decode the same way next time."""
