"""The worker: consume, run, ack. Go Machinery's ``Worker`` with late ack and bounded prefetch.

- Never holds more messages than free slots (a consume asks for exactly the free slot count).
- Late ack: a message is acked only after its task reached an end state (SUCCESS, FAILURE, or
  RETRY re-sent), so a worker that dies loses nothing.
- Unknown task names are requeued with back-off (counted in the message headers), then failed;
  malformed messages are failed (when their uuid can be read) and dead-lettered.
- SIGTERM/SIGINT: stop fetching, let running tasks finish within ``shutdown_grace``, return the
  rest to the queue; a second signal returns them at once and quits.
"""

from __future__ import annotations

import json
import queue as queue_module
import signal
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal

from .. import backoff
from ..backoff import Backoff
from ..broker import Delivery
from ..delivery import dead_letter
from ..log import logger
from ..redact import redact_url
from ..signature import Signature, State, TaskState, now_utc
from .procpool import ProcessPool
from .runner import ErrorHandler, SignatureHandler, TaskRunner
from .statewriter import StateWriter

if TYPE_CHECKING:
    from ..app import Machinery

__all__ = ["Worker", "WorkerThread"]

UNREGISTERED_COUNT = "machinery-unregistered-count"
UNREGISTERED_SINCE = "machinery-unregistered-since"


class _Tracked:
    """A delivery that can be settled once: later ack/nack calls are ignored (a task that outlives
    the shutdown grace must not ack a message that was already handed back)."""

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
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
            self._log_start()
            self._writer = self.runner.writer = StateWriter(self.app)
            if self.pool == "process":
                self.runner.process_pool = ProcessPool(self.app, self.concurrency)
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

    def _log_start(self) -> None:
        cfg = self.app.config
        logger.info(
            "worker %s: broker %s, backend %s, queues %s, concurrency %d, %d tasks registered",
            self.consumer_tag,
            redact_url(cfg.broker),
            redact_url(cfg.result_backend),
            ",".join(self.queues),
            self.concurrency,
            len(self.app.tasks),
        )

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
        with self._slots:
            limit = self.concurrency * max(1, self.app.config.worker.prefetch_multiplier)
            while len(self._in_flight) >= limit and not self._stop.is_set():
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
                deliveries = self.app.broker.consume(queue, free, poll / len(self.queues))
            except Exception as exc:
                self._broker_error(exc, backoff)
                continue
            if backoff.attempt:
                logger.info("broker is reachable again after %d failed fetches", backoff.attempt)
                backoff.reset()
            if deliveries:
                self._dispatch(deliveries)

    def _broker_error(self, exc: Exception, backoff: Backoff) -> None:
        """Log an outage once (then at DEBUG), back off with jitter, never spin."""
        delay = backoff.next()
        if self.runner.error_handler is not None:
            self.runner.error_handler(exc)
        if backoff.attempt == 1:
            logger.warning("broker failed with error: %s; retrying with back-off until it is back", exc)
        else:
            logger.debug("broker still failing (%s); next try in %.1fs", exc, delay)
        self._stop.wait(delay)

    def _dispatch(self, deliveries: list[Delivery]) -> None:
        if self.app.config.worker.store_intermediate_states:
            received = [
                TaskState(sig.uuid, State.RECEIVED, task_name=sig.name)
                for sig in (d.signature for d in deliveries)
                if sig is not None and self.app.is_registered(sig.name) and not _early(sig)
            ]
            self._writer.put_states(received)
        tracked = [_Tracked(delivery) for delivery in deliveries]
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
                tracked.settle(lambda d=tracked.delivery: d.nack(requeue=True))  # type: ignore[misc]
                self._release(tracked)
            else:
                self._handle(tracked)

    def _handle(self, tracked: _Tracked) -> None:
        delivery = tracked.delivery
        try:
            sig = delivery.signature
            if sig is None:
                self._malformed(tracked)
            elif not self.app.is_registered(sig.name):
                self._unregistered(tracked, sig)
            elif _early(sig):
                assert sig.eta is not None
                delay = (sig.eta - now_utc()).total_seconds()
                tracked.settle(lambda: delivery.nack(requeue=True, delay=delay))
            else:
                final = self.runner.run(sig)
                if final is not None:  # the writer stores it, then acks, in a batch
                    self._writer.put_final(final, tracked)
                else:
                    tracked.settle(delivery.ack)
        except Exception as exc:
            logger.exception("could not finish handling a message; returning it to the queue")
            if self.runner.error_handler is not None:
                self.runner.error_handler(exc)
            tracked.settle(lambda: delivery.nack(requeue=True, delay=1.0))
        self._release(tracked)

    def _release(self, tracked: _Tracked) -> None:
        with self._slots:
            self._in_flight.pop(id(tracked), None)
            self._slots.notify_all()

    def _malformed(self, tracked: _Tracked) -> None:
        delivery = tracked.delivery
        uuid = _uuid_from_body(delivery.body)
        error = f"malformed message: {delivery.error}"
        if uuid:
            self.app.backend.set_state(TaskState(uuid, State.FAILURE, error=error))
        logger.error("%s (uuid %s); moved to the dead-letter store", error, uuid or "unreadable")
        tracked.settle(lambda: dead_letter(delivery, error))

    def _unregistered(self, tracked: _Tracked, sig: Signature) -> None:
        delivery = tracked.delivery
        if sig.ignore_when_task_not_registered:
            logger.info("task %r is not registered here; dropped (ignore_when_task_not_registered)", sig.name)
            tracked.settle(delivery.ack)
            return
        cfg = self.app.config.worker
        count = int(sig.headers.get(UNREGISTERED_COUNT, "0")) + 1
        since = float(sig.headers.get(UNREGISTERED_SINCE, time.time()))
        if count > cfg.unregistered_requeue_limit and time.time() - since >= cfg.unregistered_requeue_seconds:
            error = f"task {sig.name!r} is not registered"
            logger.error(
                "%s in any worker that saw it (%d tries); uuid %s failed", error, count - 1, sig.uuid
            )
            self.app.backend.set_state(TaskState(sig.uuid, State.FAILURE, task_name=sig.name, error=error))
            tracked.settle(delivery.ack)
            return
        delay = backoff.delay(count, 0.1, 5.0)  # jittered: no worker wins the requeue race every time
        logger.debug("task %r is not registered here; requeued (%d) in %.2fs", sig.name, count, delay)
        sig.headers = {**sig.headers, UNREGISTERED_COUNT: str(count), UNREGISTERED_SINCE: repr(since)}
        sig.eta = now_utc() + timedelta(seconds=delay)

        def requeue() -> None:
            self.app.broker.publish(sig)
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
        self._threads = []
        if self._writer is not None:
            self._writer.close()
            self.runner.writer = None
        if self.runner.process_pool is not None:
            self.runner.process_pool.close()
            self.runner.process_pool = None
        logger.info("worker %s stopped", self.consumer_tag)


def _early(sig: Signature) -> bool:
    return sig.eta is not None and sig.eta > now_utc()


def _uuid_from_body(body: bytes) -> str:
    try:
        data: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(data, dict):
        return ""
    for key, value in data.items():
        if key.lower() == "uuid" and isinstance(value, str):
            return value
    return ""
