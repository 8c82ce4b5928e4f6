"""Running one task: Go Machinery's ``Worker.Process`` pipeline.

STARTED → call → SUCCESS (then OnSuccess callbacks and the chord) or RETRY (re-sent with an ETA,
Fibonacci back-off) or FAILURE (then OnError callbacks and the chord's verdict).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .. import codec, tracing
from ..errors import Retry, TimeLimitExceeded
from ..log import logger
from ..retry import fibonacci_next
from ..signature import Arg, Signature, State, TaskState, now_utc
from ..task import Task, _current
from .procpool import ChildFailure, ProcessPool, Results
from .statewriter import StateWriter
from .timelimit import TimeLimits, raise_in_thread

if TYPE_CHECKING:
    from ..app import Machinery

__all__ = ["TaskRunner", "error_text"]

SignatureHandler = Callable[[Signature], None]
ErrorHandler = Callable[[BaseException], None]


def error_text(exc: BaseException) -> str:
    """The text stored as a FAILURE's error: ``str(exc)``, or the exception's name when empty."""
    return str(exc) or type(exc).__name__


class _AsyncLoop:
    """One event loop thread per runner for ``async def`` tasks."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="machinery-asyncio", daemon=True)
        self.thread.start()

    def run(self, coro: Any, soft_limit: float | None) -> Any:
        async def limited() -> Any:
            try:
                return await asyncio.wait_for(coro, soft_limit)
            except TimeoutError:
                raise TimeLimitExceeded() from None

        return asyncio.run_coroutine_threadsafe(limited(), self.loop).result()


class _Guard:
    """Lets the watchdog interrupt a task only while it is still running."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = True
        self.timed_out = False


class TaskRunner:
    """Runs signatures for one app. Shared by the worker's threads and by eager mode."""

    def __init__(self, app: Machinery) -> None:
        self.app = app
        self.error_handler: ErrorHandler | None = None
        self.pre_task_handler: SignatureHandler | None = None
        self.post_task_handler: SignatureHandler | None = None
        self._limits = TimeLimits()
        self._async: _AsyncLoop | None = None
        self._async_lock = threading.Lock()
        #: set by a worker with ``pool="process"``: task functions run in its children
        self.process_pool: ProcessPool | None = None
        #: set by a worker: batches state writes (see :mod:`machinery.worker.statewriter`)
        self.writer: StateWriter | None = None

    @property
    def backend(self) -> Any:
        return self.app.backend

    def _store(self, state: TaskState) -> None:
        """Store ``state`` now, after any state of this task still queued in the writer."""
        if self.writer is not None:
            self.writer.write_now(state)
        else:
            self.backend.set_state(state)

    def _write(self, sig: Signature, state: State, **fields: Any) -> None:
        self._store(TaskState(sig.uuid, state, task_name=sig.name, **fields))

    # the pipeline ----------------------------------------------------------------------------
    def run(self, sig: Signature) -> TaskState | None:
        """Run one registered task to its end state. Raises only when the backend or broker
        fails (the caller then returns the message to the queue).

        With a :attr:`writer` (the worker's batching state writer) every state goes through it in
        order, and a plain SUCCESS (no callbacks, no chord, no post-task handler) is **returned**
        unwritten, so the caller can store it and ack the message in one batch; otherwise every
        state is stored here and None is returned.
        """
        task = self.app.get_task(sig.name)
        if self.app.config.worker.store_intermediate_states:
            started = TaskState(sig.uuid, State.STARTED, task_name=sig.name)
            if self.writer is not None:
                self.writer.put_state(started)
            else:
                self.backend.set_state(started)
        if self.pre_task_handler is not None:
            self.pre_task_handler(sig)
        try:
            guard = _Guard()
            try:
                with tracing.execute_span(sig):
                    value = self._call(task, sig, guard)
            except Retry as retry:
                self._retry(sig, retry, countdown=retry.countdown)
            except Exception as exc:  # the task's own failure, any type
                if guard.timed_out:
                    return None  # the hard limit already failed it; discard the late outcome
                logger.debug("task %s[%s] raised", sig.name, sig.uuid, exc_info=True)
                self._retry(sig, exc)
            else:
                if guard.timed_out:
                    return None
                if self.writer is not None and self._deferrable(sig):
                    return self._success_state(sig, value)
                self._succeeded(sig, value)
        finally:
            if self.post_task_handler is not None:
                self.post_task_handler(sig)
        return None

    def _deferrable(self, sig: Signature) -> bool:
        """A SUCCESS may be stored later (batched with its ack) when nothing waits on it here."""
        return not sig.on_success and sig.chord_callback is None and self.post_task_handler is None

    @staticmethod
    def _success_state(sig: Signature, value: Any) -> TaskState:
        results = value if isinstance(value, Results) else codec.results_from_return(value)
        return TaskState(sig.uuid, State.SUCCESS, task_name=sig.name, results=results)

    def _call(self, task: Task[Any, Any], sig: Signature, guard: _Guard) -> Any:
        options = task.options
        if self.process_pool is not None and not task.is_async:
            try:
                return self.process_pool.call(codec.encode_signature(sig), options)
            except ChildFailure as failure:
                raise RuntimeError(str(failure)) from None
        token = _current.set(sig)
        handles: list[int] = []
        try:
            if task.is_async:
                return self._run_async(task.fn(*sig.arg_values, **sig.kwargs), options.soft_time_limit)
            thread_id = threading.get_ident()
            if options.soft_time_limit:
                handles.append(
                    self._limits.schedule(options.soft_time_limit, lambda: self._interrupt(guard, thread_id))
                )
            if options.time_limit:
                handles.append(
                    self._limits.schedule(options.time_limit, lambda: self._hard_limit(guard, sig, thread_id))
                )
            try:
                return task.fn(*sig.arg_values, **sig.kwargs)
            finally:
                with guard.lock:
                    guard.active = False
        finally:
            for handle in handles:
                self._limits.cancel(handle)
            _current.reset(token)

    def _run_async(self, coro: Any, soft_limit: float | None) -> Any:
        with self._async_lock:
            if self._async is None:
                self._async = _AsyncLoop()
        return self._async.run(coro, soft_limit)

    @staticmethod
    def _interrupt(guard: _Guard, thread_id: int) -> None:
        with guard.lock:
            if guard.active:
                raise_in_thread(thread_id, TimeLimitExceeded)

    def _hard_limit(self, guard: _Guard, sig: Signature, thread_id: int) -> None:
        with guard.lock:
            if not guard.active:
                return
            guard.timed_out = True
            raise_in_thread(thread_id, TimeLimitExceeded)
        logger.error("task %s[%s] exceeded its hard time limit", sig.name, sig.uuid)
        self._failed(sig, TimeLimitExceeded())

    # outcomes --------------------------------------------------------------------------------
    def _succeeded(self, sig: Signature, value: Any) -> None:
        state = self._success_state(sig, value)
        results = state.results
        self._store(state)
        logger.debug("task %s[%s] succeeded: %r", sig.name, sig.uuid, value)
        for callback in sig.on_success:
            callback = callback.copy()
            if not sig.immutable:
                callback.args.extend(Arg(r.value, r.type) for r in results or [])
            self.app.send_task(callback)
        self._check_chord(sig)

    def _retry(self, sig: Signature, exc: BaseException, countdown: float | None = None) -> None:
        if sig.retry_count <= 0:
            if isinstance(exc, Retry):
                exc = RuntimeError(exc.message or "retry limit reached")
            self._failed(sig, exc)
            return
        sig.retry_count -= 1
        if countdown is None:
            sig.retry_timeout = fibonacci_next(sig.retry_timeout)
            countdown = sig.retry_timeout
        self._write(sig, State.RETRY, error=error_text(exc))
        logger.info(
            "task %s[%s] failed (%s); retrying in %ss, %d retries left",
            sig.name,
            sig.uuid,
            error_text(exc),
            countdown,
            sig.retry_count,
        )
        sig.eta = now_utc() + timedelta(seconds=countdown)
        self.app.send_task(sig)

    def _failed(self, sig: Signature, exc: BaseException) -> None:
        text = error_text(exc)
        self._write(sig, State.FAILURE, error=text)
        if self.error_handler is not None:
            self.error_handler(exc)
        else:
            logger.error("task %s[%s] failed: %s", sig.name, sig.uuid, text)
        for callback in sig.on_error:
            callback = callback.copy()
            callback.args.insert(0, Arg(text, "string"))
            self.app.send_task(callback)
        self._check_chord(sig)

    def _check_chord(self, sig: Signature) -> None:
        """Fire the chord callback once every member finished: exactly once, and only when all
        succeeded; otherwise fail the callback visibly, naming the failed member."""
        if not sig.group_uuid or sig.chord_callback is None:
            return
        states = self.backend.group_states(sig.group_uuid)
        if len(states) < sig.group_task_count or not all(s.is_completed for s in states):
            return
        if not self.backend.trigger_chord(sig.group_uuid):
            return
        callback = sig.chord_callback.copy()
        failed = [s for s in states if s.is_failure]
        if failed:
            first = failed[0]
            self._store(
                TaskState(
                    callback.uuid,
                    State.FAILURE,
                    task_name=callback.name,
                    error=f"chord member {first.task_name} ({first.task_uuid}) failed: {first.error}",
                )
            )
            return
        if not callback.immutable:
            for state in states:
                callback.args.extend(Arg(r.value, r.type) for r in state.results or [])
        self.app.send_task(callback)
