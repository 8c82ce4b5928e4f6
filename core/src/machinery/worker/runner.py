"""Running one task: Go Machinery's ``Worker.Process`` pipeline.

STARTED → call → SUCCESS (then OnSuccess callbacks and the chord) or RETRY (re-sent with an ETA,
Fibonacci back-off) or FAILURE (then OnError callbacks and the chord's verdict).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .. import codec, tracing
from ..errors import MessageError, Retry, TimeLimitExceeded, UnknownGroupError
from ..log import logger
from ..periodic import shared_lock
from ..retry import fibonacci_next
from ..signature import Arg, Signature, State, TaskState, now_utc
from ..task import Task, _current
from .emitter import NO_EVENTS, Emitter, NullEmitter
from .procpool import ChildFailure, ProcessPool, Results
from .statewriter import StateWriter
from .timelimit import TimeLimits, raise_in_thread

if TYPE_CHECKING:
    from ..app import Machinery

__all__ = ["MAX_RETRY_DELAY", "TaskRunner", "error_text"]

#: Longest retry countdown in seconds (a week): a hostile RetryTimeout such as 2**62 would
#: otherwise overflow the ETA.
MAX_RETRY_DELAY = 7 * 24 * 3600.0
#: Tries to publish a chord's callback before it is stored as FAILURE instead.
CHORD_PUBLISH_TRIES = 5

SignatureHandler = Callable[[Signature], None]
ErrorHandler = Callable[[BaseException], None]


def error_text(exc: BaseException) -> str:
    """The text stored as a FAILURE's error: ``str(exc)``, or the exception's name when empty."""
    return str(exc) or type(exc).__name__


#: entered instead of the execute span when no tracer provider is set (reusable: it holds nothing)
_NO_SPAN = contextlib.nullcontext()


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

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


class _Guard:
    """Lets the watchdog interrupt a task only while it is still running."""

    __slots__ = ("active", "error", "failed", "lock", "timed_out")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = True
        self.timed_out = False
        #: with a hard time limit: set once the limit's FAILURE is stored (the message may be acked only
        #: then); made only for tasks that have one (an Event per task is a measurable cost)
        self.failed: threading.Event | None = None
        self.error: BaseException | None = None


class _Unencodable:
    """A child's result that could not be encoded (the error names it): the task fails."""

    def __init__(self, message: str) -> None:
        self.message = message


#: The lock key marking a chord's callback as published (recovery after a worker died checks it).
CHORD_SENT_KEY = "machinery_chord_sent:{}"
#: Seconds a recovering member waits for a live trigger to publish and mark a callback whose state is
#: missing or a young PENDING (the trigger stores PENDING, publishes, then marks, within milliseconds).
RECOVERY_GRACE = 2.0
#: Seconds between its looks meanwhile.
RECOVERY_POLL = 0.5
#: The lock key that lets one recovery of a chord's callback at a time look and send, and its lease.
CHORD_RECOVERY_KEY = "machinery_chord_recovery:{}"
RECOVERY_LEASE = 30.0


def _young(state: TaskState) -> bool:
    """A PENDING stored less than RECOVERY_GRACE ago (one without a creation time counts as old)."""
    if state.created_at is None:
        return False
    return (now_utc() - state.created_at).total_seconds() < RECOVERY_GRACE


#: How many times a task raised Retry (its retry-later budget is separate from retry_count).
RETRY_LATER_HEADER = "machinery-retry-later"


def _count_header(value: object) -> int:
    """A count from a header a message carries: a non-negative int, whatever was sent (garbage is 0)."""
    try:
        count = int(str(value))
    except ValueError:
        return 0
    return max(count, 0)


def _clamp_delay(seconds: float) -> float:
    """A countdown within [0, MAX_RETRY_DELAY] (NaN → 0)."""
    if not seconds > 0:
        return 0.0
    return min(float(seconds), MAX_RETRY_DELAY)


class TaskRunner:
    """Runs signatures for one app. Shared by the worker's threads and by eager mode."""

    def __init__(self, app: Machinery) -> None:
        self.app = app
        self.error_handler: ErrorHandler | None = None
        self.pre_task_handler: SignatureHandler | None = None
        self.post_task_handler: SignatureHandler | None = None
        self._limits = TimeLimits()
        self._local = threading.local()
        self._async: _AsyncLoop | None = None
        self._async_lock = threading.Lock()
        #: set by a worker with ``pool="process"``: task functions run in its children
        self.process_pool: ProcessPool | None = None
        #: set by a worker: batches state writes (see :mod:`machinery.worker.statewriter`)
        self.writer: StateWriter | None = None
        #: set by a worker: task events and metrics (see :mod:`machinery.worker.emitter`)
        self.events: Emitter | NullEmitter = NO_EVENTS

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

    def _call_handler(self, handler: Callable[[Any], None] | None, arg: Any) -> None:
        """A user handler that raises (even SystemExit) is logged; the task goes on regardless."""
        if handler is None:
            return
        try:
            handler(arg)
        except BaseException:
            logger.exception("a worker handler (%r) raised; ignored", handler)

    def close(self) -> None:
        """Stop the threads this runner started (the asyncio loop, the time-limit watchdog)."""
        self._limits.close()
        with self._async_lock:
            loop, self._async = self._async, None
        if loop is not None:
            loop.close()

    # the pipeline ----------------------------------------------------------------------------
    def run(self, sig: Signature, redelivered: bool = False) -> TaskState | None:
        """Run one registered task to its end state. Raises only when the backend or broker
        fails (the caller then returns the message to the queue). ``redelivered``: a worker may
        have died handling this message before (a chord member then re-checks its callback).

        With a :attr:`writer` (the worker's batching state writer) every state goes through it in
        order, and a plain SUCCESS (no callbacks, no chord, no post-task handler) is **returned**
        unwritten, so the caller can store it and ack the message in one batch; otherwise every
        state is stored here and None is returned.
        """
        # everything this task sends (chain links, chord callbacks, retries, errbacks) joins its trace;
        # asked once per task: without a tracer provider neither span's context manager is entered
        if tracing.active():
            with tracing.continued(sig):
                return self._run(sig, redelivered, traced=True)
        return self._run(sig, redelivered, traced=False)

    def _run(self, sig: Signature, redelivered: bool, traced: bool) -> TaskState | None:
        self._local.redelivered = redelivered
        self._local.failed = False
        task = self.app.get_task(sig.name)
        if sig.group_uuid and sig.chord_callback is not None and not self._group_known(sig):
            return None
        if self.app.config.worker.store_intermediate_states:
            started = TaskState(sig.uuid, State.STARTED, task_name=sig.name)
            if self.writer is not None:
                self.writer.put_state(started)
            else:
                self.backend.set_state(started)
        self.events.emit("started", sig)
        self._call_handler(self.pre_task_handler, sig)
        try:
            guard = _Guard()
            try:
                with tracing.execute_span(sig) if traced else _NO_SPAN:
                    value = self._call(task, sig, guard)
            except Retry as retry:
                self._retry_later(sig, retry)
            except Exception as exc:  # the task's own failure, any type
                if guard.timed_out:
                    return self._after_hard_limit(guard)
                logger.debug("task %s[%s] raised", sig.name, sig.uuid, exc_info=True)
                self._retry(sig, exc)
            except BaseException as exc:  # SystemExit, KeyboardInterrupt, GeneratorExit: never retried
                if guard.timed_out:
                    return self._after_hard_limit(guard)
                logger.error(
                    "task %s[%s] raised %s; it failed, the worker keeps its slot",
                    sig.name,
                    sig.uuid,
                    type(exc).__name__,
                )
                self._failed(sig, RuntimeError(f"task raised {type(exc).__name__}: {error_text(exc)}"))
            else:
                if guard.timed_out:
                    return self._after_hard_limit(guard)
                try:
                    state = self._success_state(sig, value)
                except MessageError as exc:  # a result no store can hold: FAILURE, never retried
                    self._failed(sig, exc)
                    return None
                self.events.emit("succeeded", sig)
                if self.writer is not None and self._deferrable(sig):
                    return state
                self._succeeded(sig, state)
        finally:
            self._call_handler(self.post_task_handler, sig)
        return None

    @staticmethod
    def _after_hard_limit(guard: _Guard) -> None:
        """The watchdog failed this task: wait until its FAILURE is stored (so the message is acked
        only then), and surface the watchdog's error when it could not store it."""
        assert guard.failed is not None  # timed_out is only set by a scheduled hard limit
        guard.failed.wait()
        if guard.error is not None:
            raise guard.error
        return None

    def _deferrable(self, sig: Signature) -> bool:
        """A SUCCESS may be stored later (batched with its ack) when nothing waits on it here."""
        return not sig.on_success and sig.chord_callback is None and self.post_task_handler is None

    @staticmethod
    def _success_state(sig: Signature, value: Any) -> TaskState:
        """The SUCCESS state; raises MessageError (naming the type) when the result cannot be stored."""
        if isinstance(value, _Unencodable):
            raise MessageError(value.message)
        if isinstance(value, Results):
            results: list[Arg] | None = value
        else:
            results = codec.results_from_return(value)
            codec.check_results(results, sig.name)
        return TaskState(sig.uuid, State.SUCCESS, task_name=sig.name, results=results)

    def _call(self, task: Task[Any, Any], sig: Signature, guard: _Guard) -> Any:
        options = task.options
        if self.process_pool is not None and not task.is_async:
            try:
                return self.process_pool.call(codec.encode_signature(sig), options)
            except ChildFailure as failure:
                raise RuntimeError(str(failure)) from None
            except MessageError as unencodable:
                return _Unencodable(str(unencodable))
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
                guard.failed = threading.Event()
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
        try:
            logger.error("task %s[%s] exceeded its hard time limit", sig.name, sig.uuid)
            self._failed(sig, TimeLimitExceeded())
        except BaseException as exc:
            guard.error = exc
            raise
        finally:
            assert guard.failed is not None
            guard.failed.set()

    # outcomes --------------------------------------------------------------------------------
    def _succeeded(self, sig: Signature, state: TaskState) -> None:
        results = state.results
        self._store(state)
        logger.debug("task %s[%s] succeeded: %r", sig.name, sig.uuid, results)
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
            sig.retry_timeout = min(fibonacci_next(max(0, sig.retry_timeout)), int(MAX_RETRY_DELAY))
            countdown = sig.retry_timeout
        countdown = _clamp_delay(countdown)
        self._write(sig, State.RETRY, error=error_text(exc))
        self.events.emit("retried", sig, error=error_text(exc))
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

    def _retry_later(self, sig: Signature, retry: Retry) -> None:
        """Go's ErrRetryTaskLater: run again in ``retry.countdown`` s, within its own budget."""
        limit = retry.max_retries
        if limit is None:
            limit = self.app.config.worker.retry_later_limit
        used = _count_header(sig.headers.get(RETRY_LATER_HEADER))
        if used >= limit:
            self._failed(sig, RuntimeError(retry.message or f"retry-later limit reached ({limit})"))
            return
        sig.headers = {**sig.headers, RETRY_LATER_HEADER: str(used + 1)}
        countdown = _clamp_delay(retry.countdown)
        self._write(sig, State.RETRY, error=error_text(retry))
        self.events.emit("retried", sig, error=error_text(retry))
        logger.info(
            "task %s[%s] asked to retry later (%d of %d); in %ss",
            sig.name,
            sig.uuid,
            used + 1,
            limit,
            countdown,
        )
        sig.eta = now_utc() + timedelta(seconds=countdown)
        self.app.send_task(sig)

    def failed_here(self) -> bool:
        """True when the last :meth:`run` in this thread stored the task's FAILURE (the worker then
        settles its message with ``ack_failure`` where the delivery has it: SQS's StopTaskDeletionOnError)."""
        return bool(getattr(self._local, "failed", False))

    def _failed(self, sig: Signature, exc: BaseException) -> None:
        text = error_text(exc)
        self._write(sig, State.FAILURE, error=text)
        self._local.failed = True
        self.events.emit("failed", sig, error=text)
        if self.error_handler is not None:
            self._call_handler(self.error_handler, exc)
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
        try:
            states = self.backend.group_states(sig.group_uuid)
        except UnknownGroupError as exc:
            self._orphaned(sig, exc)
            return
        if len(states) < sig.group_task_count or not all(s.is_completed for s in states):
            return
        if not self.backend.trigger_chord(sig.group_uuid):
            if getattr(self._local, "redelivered", False):
                self._recover_callback(sig, states)
            return
        self._fire(sig, states)

    def _recover_callback(self, sig: Signature, states: list[TaskState]) -> None:
        """A redelivered member finds the chord triggered: if the callback has no state, or only
        PENDING (stored just before its publish), the worker that triggered it may have died before
        publishing it, so it is published (again): a rare duplicate rather than a lost callback.

        A live trigger may be between those steps right now (a member redelivered for another reason
        runs at the same time): while the callback's state is missing or a PENDING younger than
        :data:`RECOVERY_GRACE`, this waits (up to that long) for the trigger to publish and mark it."""
        assert sig.chord_callback is not None
        deadline = time.monotonic() + RECOVERY_GRACE
        while True:
            state = self.backend.get_state(sig.chord_callback.uuid)
            if state is not None and state.state != State.PENDING:
                return
            if state is not None and not _young(state):
                break  # PENDING for a while: the mark below tells whether it was published
            if time.monotonic() >= deadline:
                break
            time.sleep(min(RECOVERY_POLL, max(0.0, deadline - time.monotonic())))
        # Several members of the chord may be recovering at once (a dead worker held them all): one
        # at a time, each looking again once it is its turn, so only the first sends the callback.
        key = CHORD_RECOVERY_KEY.format(sig.group_uuid)
        if not self._take_turn(key, sig.chord_callback.uuid):
            return
        try:
            state = self.backend.get_state(sig.chord_callback.uuid)
            if state is not None and state.state != State.PENDING:
                return
            if state is not None and not self._claim_chord_send(sig.group_uuid):
                return  # PENDING, and marked sent: it waits in the queue, it is not lost
            logger.warning(
                "chord %s was triggered but its callback never sent (a worker died in between); sending it",
                sig.group_uuid,
            )
            self._fire(sig, states)
        finally:
            self._end_turn(key)

    def _take_turn(self, key: str, callback_uuid: str) -> bool:
        """Hold ``key`` (a lease of RECOVERY_LEASE seconds, so a recovery that dies frees it). False
        when the callback moved on meanwhile (it runs or ran) or the lease stayed held too long; a
        lock that fails lets this recovery go ahead (a rare duplicate rather than a lost callback)."""
        deadline = time.monotonic() + RECOVERY_LEASE + RECOVERY_GRACE
        while True:
            try:
                if self.app.lock.acquire(key, RECOVERY_LEASE):
                    return True
            except Exception as exc:
                logger.warning("could not take the chord recovery lease %s: %s", key, exc)
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(RECOVERY_POLL)
            state = self.backend.get_state(callback_uuid)
            if state is not None and state.state != State.PENDING:
                return False

    def _end_turn(self, key: str) -> None:
        try:
            self.app.lock.release(key)
        except Exception as exc:  # it expires by itself
            logger.warning("could not release the chord recovery lease %s: %s", key, exc)

    def _fire(self, sig: Signature, states: list[TaskState]) -> None:
        assert sig.chord_callback is not None
        callback = sig.chord_callback.copy()
        failed = [s for s in states if s.is_failure]
        if failed:
            first = failed[0]
            self._fail_callback(
                callback, f"chord member {first.task_name} ({first.task_uuid}) failed: {first.error}"
            )
            return
        if not callback.immutable:
            for state in states:
                callback.args.extend(Arg(r.value, r.type) for r in state.results or [])
        self._publish_callback(callback)
        self._claim_chord_send(sig.group_uuid)  # the mark: a redelivered member will not send it again

    def _claim_chord_send(self, group_uuid: str) -> bool:
        """Mark the chord's callback as sent; False when it already was. A lock key shared across
        processes holds the mark (taken once the callback is published, or by the one recovery that
        sends it again); with a process-local lock nobody can tell, so True: a rare duplicate callback
        rather than a lost one."""
        if not shared_lock(self.app):
            return True
        try:
            return self.app.lock.acquire(CHORD_SENT_KEY.format(group_uuid), float(self.backend.expires_in))
        except Exception as exc:  # the mark is an optimisation: without it, recovery may send twice
            logger.warning("could not mark chord %s's callback as sent: %s", group_uuid, exc)
            return True

    def _group_known(self, sig: Signature) -> bool:
        """A chord member checks its group before it runs: one of an unknown or expired group (a
        backlog that outlived ``results_expire_in``) ends FAILURE without running."""
        try:
            self.backend.group_states(sig.group_uuid)
        except UnknownGroupError as exc:
            self._orphaned(sig, exc)
            return False
        return True

    def _orphaned(self, sig: Signature, exc: UnknownGroupError) -> None:
        """A chord member whose group is unknown or expired: it cannot join, so it and the
        callback end FAILURE with that reason (redelivering would only run it again)."""
        assert sig.chord_callback is not None
        reason = f"chord group {sig.group_uuid} is unknown or expired ({exc}); the callback cannot run"
        logger.error("task %s[%s]: %s", sig.name, sig.uuid, reason)
        self._fail_callback(sig.chord_callback, reason)  # first: whoever sees the member fail finds it done
        self._write(sig, State.FAILURE, error=reason)

    def _member_gave_up(self, sig: Signature, error: str) -> None:
        """A chord member dead-lettered by the worker will never finish again: a callback that was
        never sent ends FAILURE naming it, so ``get()`` raises instead of waiting forever."""
        callback = sig.chord_callback
        if not sig.group_uuid or callback is None or not callback.uuid:
            return
        try:
            if self.backend.get_state(callback.uuid) is None:
                self._fail_callback(callback, f"chord member {sig.name} ({sig.uuid}) failed: {error}")
        except Exception as exc:
            logger.warning("could not fail the callback of chord %s: %s", sig.group_uuid, exc)

    def _fail_callback(self, callback: Signature, error: str) -> None:
        if not callback.uuid:
            return  # a hand-made message with an anonymous callback: nobody can wait on it
        self._store(TaskState(callback.uuid, State.FAILURE, task_name=callback.name, error=error))

    def _publish_callback(self, callback: Signature) -> None:
        """The chord is triggered: publish its callback, retrying a failed publish; when it still
        fails, store the callback FAILURE so whoever waits on it gets an error, not a hang."""
        delay = 0.2
        for attempt in range(1, CHORD_PUBLISH_TRIES + 1):
            try:
                self.app.send_task(callback)
                return
            except Exception as exc:
                if attempt == CHORD_PUBLISH_TRIES:
                    reason = f"chord callback could not be published: {error_text(exc)}"
                    logger.error("%s (uuid %s)", reason, callback.uuid)
                    self._fail_callback(callback, reason)
                    return
                logger.warning("publishing the chord callback failed (%s); retrying in %.1fs", exc, delay)
                threading.Event().wait(delay)
                delay *= 2
