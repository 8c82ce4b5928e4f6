"""Registered tasks: a thin wrapper that keeps the function callable and builds signatures."""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from .signature import Signature, now_utc

if TYPE_CHECKING:
    from .app import Machinery
    from .result import AsyncResult

__all__ = ["Task", "TaskOptions", "current_signature"]

P = ParamSpec("P")
R = TypeVar("R")

_current: contextvars.ContextVar[Signature | None] = contextvars.ContextVar(
    "machinery_signature", default=None
)


def current_signature() -> Signature | None:
    """The Signature of the task running in this thread or coroutine (Go's
    ``tasks.SignatureFromContext``); ``None`` outside a task. Read ``retry_count``, ``uuid``,
    ``headers`` and the rest from it."""
    return _current.get()


@dataclass(frozen=True)
class TaskOptions:
    """Per-task settings given to ``@app.task(...)``.

    ``soft_time_limit``: seconds after which :class:`~machinery.errors.TimeLimitExceeded` is raised
    inside the task. ``time_limit``: seconds after which the task is failed with "time limit
    exceeded" (its process is killed under ``pool="process"``; under threads its late result is
    discarded). ``retry_count``/``retry_timeout``: defaults for signatures built with ``.s()``.
    """

    soft_time_limit: float | None = None
    time_limit: float | None = None
    retry_count: int = 0
    retry_timeout: int = 0


class Task(Generic[P, R]):
    """A function registered under ``name``. Calling it runs the function here; ``.s()`` builds a
    Signature to send; ``.delay()`` sends it."""

    def __init__(self, app: Machinery, name: str, fn: Callable[P, R], options: TaskOptions) -> None:
        self.app = app
        self.name = name
        self.fn = fn
        self.options = options
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature of this task with these arguments (Machinery's ``NewSignature``)."""
        return Signature(
            self.name,
            args=list(args),
            kwargs=kwargs,
            retry_count=self.options.retry_count,
            retry_timeout=self.options.retry_timeout,
        )

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature, as Celery means it: it ignores its parent's results (in a chain,
        the previous link's results are not appended to these arguments; as a chord callback it gets
        no member results). Go's own flag, *this* task's results are not passed on, is
        ``Signature.immutable``; the workflow builders translate one into the other."""
        sig = self.s(*args, **kwargs)
        sig.ignore_parent_results = True
        return sig

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """Send this task now with these arguments."""
        return self.app.send_task(self.s(*args, **kwargs))

    def apply_async(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: datetime | None = None,
        queue: str | None = None,
        priority: int | None = None,
    ) -> AsyncResult:
        """Send this task with options, as in Celery: run it ``countdown`` seconds from now or at
        ``eta`` (not both), on ``queue`` (default ``Config.default_queue``), with ``priority``."""
        if countdown is not None and eta is not None:
            raise ValueError("apply_async takes countdown or eta, not both")
        sig = self.s(*args, **dict(kwargs or {}))
        if countdown is not None:
            sig.eta = now_utc() + timedelta(seconds=countdown)
        elif eta is not None:
            sig.set(eta=eta)
        if queue:
            sig.routing_key = queue
        if priority is not None:
            sig.priority = priority
        return self.app.send_task(sig)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"
