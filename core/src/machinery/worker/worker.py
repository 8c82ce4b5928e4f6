"""The worker: consume, run, ack. Go Machinery's ``Worker`` with late ack and bounded prefetch.

- Never holds more messages than free slots (a consume asks for exactly the free slot count).
- Late ack: a message is acked only after its task reached an end state (SUCCESS, FAILURE, or
  RETRY re-sent), so a worker that dies loses nothing.
- Unknown task names are requeued with back-off (counted in the message headers), then failed;
  malformed messages are failed (when their uuid can be read) and dead-lettered.
- Every message has a delivery budget (``worker.max_deliveries``): an error in the worker's own
  handling, or a worker dying while it holds the message, uses one delivery; when none is left the
  message ends FAILURE and is dead-lettered, naming the reason. Planned hops (an early ETA, an
  unregistered name) are published afresh and use none. Deliveries are counted by the broker where
  it can (``delivery_count``: sqlite, redis) and carried across hops in the ``machinery-deliveries`` header;
  a broker that only flags redeliveries gets its count carried by a fresh copy.
- A task, or a handler, raising ``SystemExit``/``KeyboardInterrupt`` fails that task; the slot is
  freed in ``finally`` whatever happens, and only after the task's final state is stored.
- SIGTERM/SIGINT: stop fetching, let running tasks finish within ``shutdown_grace``, return the
  rest to the queue; a second signal returns them at once and quits.
"""

from __future__ import annotations

import json
import logging
import math
import queue as queue_module
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal

from .. import codec, signing
from ..backoff import Backoff
from ..broker import Delivery, SupportsAckFailure
from ..errors import PermanentError
from ..log import logger
from ..signature import Signature, State, TaskState, now_utc
from .banner import banner
from .emitter import Emitter
from .procpool import ProcessPool
from .runner import ErrorHandler, SignatureHandler, TaskRunner, error_text
from .statewriter import StateWriter, is_permanent, nack

if TYPE_CHECKING:
    from ..app import Machinery

__all__ = ["Worker", "WorkerThread"]

UNREGISTERED_COUNT = "machinery-unregistered-count"
UNREGISTERED_SINCE = "machinery-unregistered-since"
#: deliveries used by earlier copies of a message (hops publish a fresh copy carrying it)
DELIVERIES = "machinery-deliveries"
#: largest header count believed: anything above is a hostile value, not a real count
_MAX_HEADER_COUNT = 1_000_000


class _Tracked:
    """A delivery that can be settled once: later ack/nack calls are ignored (a task that outlives
    the shutdown grace must not ack a message that was already handed back)."""

    def __init__(self, delivery: Delivery, queue: str = "") -> None:
        self.delivery = delivery
        self.queue = queue  # where it was consumed from: a copy published again goes back there
        self._lock = threading.Lock()
        self.settled = False

    def claim(self) -> bool:
        """True for the first caller only: that caller settles the message."""
        with self._lock:
            if self.settled:
                return False
            self.settled = True
            return True

    def settle(self, action: Callable[[], None]) -> None:
        if self.claim():
            action()


class WorkerThread(threading.Thread):
    """The thread of :meth:`Worker.launch_async`: ``is_alive()``/``join()`` as usual, plus ``error``,
    the exception that stopped the worker (``None`` while it runs or after a clean stop)."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(name=f"{worker.consumer_tag}-consumer", daemon=True)
        self.worker = worker
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.worker.launch()
        except BaseException as exc:  # reported to the caller through .error, never lost
            self.error = exc
            logger.error("worker %s stopped: %s", self.worker.consumer_tag, exc)

    def raise_error(self) -> None:
        """Re-raise the exception that stopped the worker, if any."""
        if self.error is not None:
            raise self.error


class Worker:
    """Consumes ``queue`` (one or several) and runs tasks on ``concurrency`` threads.

    Create it with ``app.worker(...)``; ``launch()`` blocks until ``quit()`` or a signal.
    """

    def __init__(
        self,
        app: Machinery,
        consumer_tag: str = "",
        concurrency: int = 0,
        queue: str | Sequence[str] | None = None,
        pool: Literal["thread", "process"] = "thread",
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
    ) -> None:
        if pool not in ("thread", "process"):
            raise ValueError(f"pool must be 'thread' or 'process', not {pool!r}")
        if concurrency < 0:
            raise ValueError("concurrency must be 0 (the default) or more")
        self.app = app
        self.consumer_tag = consumer_tag or "machinery_worker"
        self.concurrency = concurrency or app.config.worker.default_concurrency
        if isinstance(queue, str):
            queue = [q.strip() for q in queue.split(",") if q.strip()]
        self.queues = list(queue or [app.config.default_queue])
        self.pool = pool
        self.runner = TaskRunner(app)
        self.pre_consume_handler: Callable[[Worker], bool] | None = None
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._started = threading.Event()
        self._slots = threading.Condition()
        self._in_flight: dict[int, _Tracked] = {}
        self._jobs: queue_module.SimpleQueue[_Tracked | None] = queue_module.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._writer: StateWriter = None  # type: ignore[assignment]  # set by launch()
        #: Prometheus ``/metrics`` on this port while the worker runs (needs machinery-core[metrics])
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        #: task events, heartbeats and metrics (machinery.worker.emitter)
        self.events = Emitter(app, self.queues, self.concurrency, busy=lambda: len(self._in_flight))

    # handlers (Machinery's names) --------------------------------------------------------------
    def set_error_handler(self, handler: ErrorHandler | None) -> None:
        """Called with the exception of every failed task and every broker error."""
        self.runner.error_handler = handler

    def set_pre_task_handler(self, handler: SignatureHandler | None) -> None:
        """Called with the Signature after STARTED is stored, before the task runs."""
        self.runner.pre_task_handler = handler

    def set_post_task_handler(self, handler: SignatureHandler | None) -> None:
        """Called with the Signature after the task ended (success, failure or retry)."""
        self.runner.post_task_handler = handler

    def set_pre_consume_handler(self, handler: Callable[[Worker], bool] | None) -> None:
        """Asked before each fetch; returning False pauses consumption (checked once a second)."""
        self.pre_consume_handler = handler

    # life cycle --------------------------------------------------------------------------------
    def launch(self) -> None:
        """Consume until ``quit()`` or SIGTERM/SIGINT; then drain and return."""
        restore = self._install_signal_handlers()
        try:
            self._writer = self.runner.writer = StateWriter(self.app, release_many=self._release_many)
            if self.pool == "process":
                self.runner.process_pool = ProcessPool(self.app, self.concurrency)
            self._start_metrics()  # after the pool's fork: children must not hold the metrics socket
            self._log_start()
            self.events.start()
            self._threads = [
                threading.Thread(target=self._task_loop, name=f"{self.consumer_tag}-task-{n}", daemon=True)
                for n in range(self.concurrency)
            ]
            for thread in self._threads:
                thread.start()
            self._started.set()
            self._consume_loop()
        finally:
            self._drain()
            restore()

    def launch_async(self) -> WorkerThread:
        """Run ``launch()`` in a background thread (no signal handling); returns the thread, whose
        ``error`` holds what ended the worker, if anything did (Go's error channel)."""
        thread = WorkerThread(self)
        thread.start()
        return thread

    def quit(self, abort: bool = False) -> None:
        """Stop fetching; running tasks may finish (``abort=True`` returns them at once).
        Safe to call any number of times, from any thread, even before ``launch``."""
        if abort:
            self._abort.set()
        self._stop.set()
        with self._slots:
            self._slots.notify_all()

    @property
    def aborted(self) -> bool:
        """True when the worker was told to quit at once (``quit(abort=True)``, a second signal)."""
        return self._abort.is_set()

    @property
    def running(self) -> bool:
        return self._started.is_set() and not self._stop.is_set()

    def _start_metrics(self) -> None:
        self.runner.events = self.events
        if self.metrics_port is not None:
            from ..metrics import WorkerMetrics

            metrics = WorkerMetrics(
                lambda: len(self._in_flight), self.concurrency, self.app.broker, self.queues
            )
            self.metrics_port = metrics.serve(self.metrics_port, self.metrics_host)
            self.events.attach_metrics(metrics)

    def _log_start(self) -> None:
        if logger.isEnabledFor(logging.INFO):
            logger.info("%s", banner(self))

    def _install_signal_handlers(self) -> Callable[[], None]:
        if self.app.config.no_unix_signals or threading.current_thread() is not threading.main_thread():
            return lambda: None
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.getsignal(sig) for sig in signals}

        def handle(signum: int, frame: FrameType | None) -> None:
            if self._stop.is_set():
                logger.warning("second signal: returning running tasks to the queue and quitting now")
                self.quit(abort=True)
            else:
                logger.warning(
                    "signal %d: waiting for running tasks to finish (signal again to quit now)", signum
                )
                self.quit()

        for sig in signals:
            signal.signal(sig, handle)

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    # consuming ---------------------------------------------------------------------------------
    def _free_slots(self) -> int:
        """Slots free for new messages; 0 while the state writer cannot store (so a store outage
        never turns into messages leased, run and kept in memory)."""
        with self._slots:
            limit = self.concurrency * max(1, self.app.config.worker.prefetch_multiplier)
            while (
                len(self._in_flight) >= limit or self._writer.stalled.is_set()
            ) and not self._stop.is_set():
                self._slots.wait(self.app.config.worker.poll_timeout)
            return limit - len(self._in_flight)

    def _consume_loop(self) -> None:
        backoff = Backoff(0.25, 8.0)
        turn = 0
        while not self._stop.is_set():
            poll = self.app.config.worker.poll_timeout
            if self.pre_consume_handler is not None and not self.pre_consume_handler(self):
                self._stop.wait(poll)
                continue
            free = self._free_slots()
            if free <= 0 or self._stop.is_set():
                continue
            queue = self.queues[turn % len(self.queues)]
            turn += 1
            try:
                # jittered, so polling workers do not fetch in lock-step (the one that just requeued a
                # message would otherwise win it back nearly every time: core/PLUGINS.md, fairness)
                wait = poll * random.uniform(0.75, 1.25) / len(self.queues)
                deliveries = self.app.broker.consume(queue, free, wait)
            except Exception as exc:
                self._broker_error(exc, backoff)
                continue
            if backoff.attempt:
                logger.info("broker is reachable again after %d failed fetches", backoff.attempt)
                backoff.reset()
            if deliveries:
                self._dispatch(deliveries, queue)

    def _broker_error(self, exc: Exception, backoff: Backoff) -> None:
        """Log an outage once (then at DEBUG), back off with jitter, never spin."""
        delay = backoff.next()
        self.runner._call_handler(self.runner.error_handler, exc)
        if backoff.attempt == 1:
            logger.warning("broker failed with error: %s; retrying with back-off until it is back", exc)
        else:
            logger.debug("broker still failing (%s); next try in %.1fs", exc, delay)
        self._stop.wait(delay)

    def _dispatch(self, deliveries: list[Delivery], queue: str = "") -> None:
        deliveries = list(signing.verified(self.app.config, deliveries))  # rejects: dead-lettered, no state
        # the tasks this worker runs now are RECEIVED (event and state); the others are handled later
        emit = self.events.emit if self.events.active else None
        states = self.app.config.worker.store_intermediate_states
        received: list[TaskState] = []
        registered = self.app.is_registered
        for sig in (d.signature for d in deliveries):
            if sig is None or not registered(sig.name) or (sig.eta is not None and _early(sig)):
                continue
            if emit is not None:
                emit("received", sig, queue)
            if states:
                received.append(TaskState(sig.uuid, State.RECEIVED, task_name=sig.name))
        if received:
            self._writer.put_states(received)
        tracked = [_Tracked(delivery, queue) for delivery in deliveries]
        with self._slots:
            for one in tracked:
                self._in_flight[id(one)] = one
        for one in tracked:
            self._jobs.put(one)

    def _task_loop(self) -> None:
        # Daemon threads: a task still running after the shutdown grace (its message already
        # returned to the queue) must not keep the process alive.
        while (tracked := self._jobs.get()) is not None:
            if self._stop.is_set():  # fetched but not started: give it back rather than start it
                try:
                    tracked.settle(lambda d=tracked.delivery: d.nack(requeue=True))  # type: ignore[misc]
                except Exception as exc:
                    logger.warning("could not return a message (%s); it comes back after its lease", exc)
                finally:
                    self._release(tracked)
            else:
                self._handle(tracked)

    def _handle(self, tracked: _Tracked) -> None:
        """Handle one message; whatever happens (even SystemExit) its slot is freed, by the state
        writer once the final state is stored, or here."""
        freed_by_writer = False
        try:
            freed_by_writer = self._process(tracked)
        except BaseException as exc:
            self._handling_failed(tracked, exc)
        finally:
            if not freed_by_writer:
                self._release(tracked)

    def _process(self, tracked: _Tracked) -> bool:
        """True when the state writer frees the slot (after storing the final state)."""
        delivery = tracked.delivery
        sig = delivery.signature
        if sig is None:
            self._malformed(tracked)
            return False
        count, carry = self._delivery_count(delivery, sig)
        limit = self._max_deliveries
        if count > limit:
            self._give_up(tracked, sig, count, "the worker handling it died or failed every time")
            return False
        if carry:  # the broker only flags redeliveries: carry the count in a fresh copy
            self._hop(tracked, sig, used=count - 1, delay=None)  # keeps its ETA
        elif not self.app.is_registered(sig.name):
            self._unregistered(tracked, sig, used=count - 1)
        elif _early(sig):
            self._hop(tracked, sig, used=count - 1, delay=None)  # a planned hop: uses no delivery
        else:
            final = self.runner.run(sig, redelivered=count > 1)
            if final is not None:  # the writer stores it, acks, then frees the slot, in a batch
                # released through _release_many; a lone task stores its result in its own thread
                self._writer.put_final(final, tracked, inline=len(self._in_flight) <= 1)
                return True
            if self.runner.failed_here() and isinstance(delivery, SupportsAckFailure):
                tracked.settle(delivery.ack_failure)  # the broker may keep it (StopTaskDeletionOnError)
            else:
                tracked.settle(delivery.ack)
        return False

    @property
    def _max_deliveries(self) -> int:
        return max(1, int(self.app.config.worker.max_deliveries))

    @staticmethod
    def _delivery_count(delivery: Delivery, sig: Signature) -> tuple[int, bool]:
        """``(deliveries used including this one, whether the count must be carried in a copy)``.

        The broker's own count where it keeps one (``delivery_count`` > 1 on a redelivery), plus
        what earlier copies used (header). A redelivery the broker did not count (only its
        ``redelivered`` flag is set) counts one more here and has to be carried forward.
        """
        used_before = _header_count(sig.headers, DELIVERIES)
        server = getattr(delivery, "delivery_count", 1)
        server = server if type(server) is int and server >= 1 else 1
        if delivery.redelivered and server <= 1:
            return used_before + 2, True
        return used_before + server, False

    def _hop(self, tracked: _Tracked, sig: Signature, used: int, delay: float | None) -> None:
        """Publish a fresh copy of the message (after ``delay`` seconds; None keeps its ETA)
        carrying ``used`` deliveries, then ack this one."""
        copy = _fresh_copy(tracked, sig)
        copy.headers = {**copy.headers, DELIVERIES: str(used)}
        if delay is not None:
            copy.eta = now_utc() + timedelta(seconds=delay) if delay > 0 else None

        def republish() -> None:
            signing.sign_messages(self.app.config, [copy])  # its headers changed
            self.app.broker.publish(copy)
            tracked.delivery.ack()

        tracked.settle(republish)

    def _handling_failed(self, tracked: _Tracked, exc: BaseException) -> None:
        """The worker's own handling of a message raised. It uses one delivery: it is tried again
        later, or, with its budget used up (or for SystemExit and the like), it ends FAILURE."""
        delivery = tracked.delivery
        reason = f"{type(exc).__name__}: {error_text(exc)}"
        logger.error("could not finish handling a message (%s)", reason, exc_info=exc)
        self.runner._call_handler(self.runner.error_handler, exc)
        sig = delivery.signature
        try:
            if sig is None:
                tracked.settle(lambda: nack(delivery, requeue=False, reason=reason))
                return
            count, _ = self._delivery_count(delivery, sig)
            # a PermanentError (e.g. the store refuses this task's state for good) is not tried again
            if (
                count >= self._max_deliveries
                or not isinstance(exc, Exception)
                or isinstance(exc, PermanentError)
            ):
                self._give_up(tracked, sig, count, reason)
            else:
                self._hop(tracked, sig, used=count, delay=min(0.5 * 2.0 ** (count - 1), 60.0))
        except Exception as again:  # the broker or backend is down too: the lease brings it back
            logger.warning("could not return the message either (%s); it comes back after its lease", again)

    def _give_up(self, tracked: _Tracked, sig: Signature, count: int, reason: str) -> None:
        """FAILURE naming ``reason``, then dead-letter the message. When the store is down the message
        is returned instead (the next delivery gives up again) rather than dead-lettered silently; when it
        refuses this task's FAILURE for good (a permanent error), the dead letter alone keeps it."""
        delivery = tracked.delivery
        error = f"gave up after {count} deliveries (worker.max_deliveries={self._max_deliveries}): {reason}"
        logger.error("task %s[%s] %s; moved to the dead-letter store", sig.name, sig.uuid, error)
        self.events.emit("dead_lettered", sig, tracked.queue, error=error)
        try:
            self.runner._store(TaskState(sig.uuid, State.FAILURE, task_name=sig.name, error=error))
        except Exception as exc:
            if is_permanent(exc):  # the store refuses this task for good: the dead letter keeps it
                error = f"{error}; its FAILURE could not be stored either: {exc}"
            else:
                logger.warning("could not store the FAILURE (%s); the message is returned", exc)
                tracked.settle(lambda: nack(delivery, requeue=True, delay=5.0, reason=error))
                return
        self.runner._member_gave_up(sig, error)
        tracked.settle(lambda: nack(delivery, requeue=False, reason=error))

    def _release(self, tracked: _Tracked) -> None:
        with self._slots:
            self._in_flight.pop(id(tracked), None)
            self._slots.notify_all()

    def _release_many(self, tracked: list[_Tracked]) -> None:
        """Free the slots of a batch the state writer stored: one lock, one wake-up of the consumer."""
        with self._slots:
            for one in tracked:
                self._in_flight.pop(id(one), None)
            self._slots.notify_all()

    def _malformed(self, tracked: _Tracked) -> None:
        delivery = tracked.delivery
        uuid = _uuid_from_body(delivery.body)
        error = f"malformed message: {delivery.error}"
        if uuid:
            self.runner._store(TaskState(uuid, State.FAILURE, error=error))
        logger.error("%s (uuid %s); moved to the dead-letter store", error, uuid or "unreadable")
        tracked.settle(lambda: nack(delivery, requeue=False, reason=error))

    def _unregistered(self, tracked: _Tracked, sig: Signature, used: int) -> None:
        delivery = tracked.delivery
        if sig.ignore_when_task_not_registered:
            logger.info("task %r is not registered here; dropped (ignore_when_task_not_registered)", sig.name)
            tracked.settle(delivery.ack)
            return
        cfg = self.app.config.worker
        now = time.time()
        count = _header_count(sig.headers, UNREGISTERED_COUNT) + 1
        since = _header_time(sig.headers, UNREGISTERED_SINCE, now)
        if count > cfg.unregistered_requeue_limit and now - since >= cfg.unregistered_requeue_seconds:
            error = f"task {sig.name!r} is not registered"
            logger.error(
                "%s in any worker that saw it (%d tries); uuid %s failed", error, count - 1, sig.uuid
            )
            self.runner._store(TaskState(sig.uuid, State.FAILURE, task_name=sig.name, error=error))
            tracked.settle(delivery.ack)
            return
        # jittered for the same reason as the fetch: another worker should get the next try
        delay = min(0.05 * 2 ** min(count, 10), 5.0) * random.uniform(0.5, 1.5)
        logger.debug("task %r is not registered here; requeued (%d) in %.2fs", sig.name, count, delay)
        copy = _fresh_copy(tracked, sig)
        copy.headers = {
            **copy.headers,
            UNREGISTERED_COUNT: str(count),
            UNREGISTERED_SINCE: repr(since),
            DELIVERIES: str(used),
        }
        copy.eta = now_utc() + timedelta(seconds=delay)

        def requeue() -> None:
            signing.sign_messages(self.app.config, [copy])  # its headers changed
            self.app.broker.publish(copy)
            delivery.ack()

        tracked.settle(requeue)

    # stopping ----------------------------------------------------------------------------------
    def _drain(self) -> None:
        grace = self.app.config.worker.shutdown_grace
        deadline = time.monotonic() + grace
        with self._slots:
            while self._in_flight and not self._abort.is_set() and time.monotonic() < deadline:
                self._slots.wait(min(0.5, max(0.0, deadline - time.monotonic())))
            leftovers = list(self._in_flight.values())
        for tracked in leftovers:
            tracked.settle(lambda d=tracked.delivery: d.nack(requeue=True))  # type: ignore[misc]
        if leftovers:
            logger.warning("returned %d unfinished tasks to the queue", len(leftovers))
        for _ in self._threads:
            self._jobs.put(None)  # each idle task thread takes one and ends
        # Idle threads end at once; a task stuck past the grace keeps its (daemon) thread.
        deadline = time.monotonic() + (0.2 if leftovers else 5.0)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = []
        if self._writer is not None:
            self._writer.close()
            self.runner.writer = None
        if self.runner.process_pool is not None:
            self.runner.process_pool.close()
            self.runner.process_pool = None
        self.runner.close()
        self.events.close()
        logger.info("worker %s stopped", self.consumer_tag)


def _early(sig: Signature) -> bool:
    return sig.eta is not None and sig.eta > now_utc()


def _uuid_from_body(body: bytes) -> str:
    try:
        data: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return ""
    if not isinstance(data, dict):
        return ""
    for key, value in data.items():
        if key.lower() == "uuid" and isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeError:
                return ""  # a lone surrogate: no store could hold this uuid
            return value
    return ""


def _header_count(headers: Any, key: str) -> int:
    """A count from a header: a non-negative int, 0 when absent or garbage (a hostile header must
    not crash the worker, and must not be trusted beyond a sane bound)."""
    raw = headers.get(key) if isinstance(headers, dict) else None
    try:
        value = int(raw) if isinstance(raw, (str, int)) and not isinstance(raw, bool) else 0
    except ValueError:
        return 0
    return min(max(value, 0), _MAX_HEADER_COUNT)


def _header_time(headers: Any, key: str, now: float) -> float:
    """A unix time from a header; ``now`` when absent, garbage, non-finite or in the future."""
    raw = headers.get(key) if isinstance(headers, dict) else None
    try:
        value = float(raw) if isinstance(raw, (str, int, float)) and not isinstance(raw, bool) else now
    except ValueError:
        return now
    return value if math.isfinite(value) and value <= now else now


def _fresh_copy(tracked: _Tracked, sig: Signature) -> Signature:
    """The message as it arrived (a run may have changed ``sig``), for publishing again to the
    queue it came from."""
    try:
        copy = codec.decode_signature(tracked.delivery.body)
    except Exception:
        copy = sig.copy()
    if not copy.routing_key and tracked.queue:
        copy.routing_key = tracked.queue
    return copy
