"""What a worker tells the world: task events and heartbeats (the events store) and Prometheus metrics.

The worker calls one :class:`Emitter` where a task's state changes (``received``, ``started``,
``succeeded``, ``failed``, ``retried``, ``dead_lettered``). A call costs an append to a bounded buffer;
one background thread writes the buffer to the events store in batches and sends a heartbeat every
``worker.heartbeat_interval`` seconds. Events are observability: when the store is slow or down the
oldest buffered events are dropped (counted, logged once), and no task ever waits for, or fails
because of, the store.

With events off (``events.enabled = false``, or a backend that keeps none) and no metrics port, every
call returns at its first line and no thread runs.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from .. import codec, tracing
from ..events import (
    SupportsEventRows,
    SupportsEvents,
    TaskEvent,
    TaskEventKind,
    WorkerHeartbeat,
    events_store,
)
from ..log import logger
from ..signature import Signature

if TYPE_CHECKING:
    from ..app import Machinery
    from ..metrics import WorkerMetrics

__all__ = ["BUFFER_SIZE", "NO_EVENTS", "Emitter", "NullEmitter", "new_worker_id"]

#: events held while the store is slow; beyond it the oldest are dropped
BUFFER_SIZE = 10_000
#: events written per round trip (a full batch wakes the writer at once)
BATCH_SIZE = 500
#: longest an event waits in the buffer before it is written
FLUSH_INTERVAL = 0.5
#: longest a stopping worker waits for the last events and its last heartbeat to be written
CLOSE_TIMEOUT = 3.0


#: the fields of one buffered TaskEvent, in its order (kind, task_uuid, task_name, queue, worker, at, runtime,
#: error, group_uuid, trace_id, signature)
_Fields = tuple[
    TaskEventKind,
    str,
    str,
    str,
    str,
    float,
    "float | None",
    "str | None",
    "str | None",
    "str | None",
    "dict[str, Any] | None",
]


def new_worker_id() -> str:
    """``host:pid:4hex``: unique per worker object, readable in tables."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


class Emitter:
    """Task events, heartbeats and metrics of one worker. ``start()`` at launch, ``close()`` at quit."""

    def __init__(
        self,
        app: Machinery,
        queues: Sequence[str],
        concurrency: int,
        busy: Callable[[], int] = lambda: 0,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.app = app
        self.worker_id = new_worker_id()
        self.queues = tuple(queues)
        self.concurrency = concurrency
        self.busy = busy
        self.metrics = metrics
        self.store: SupportsEvents | None = events_store(app.backend) if app.config.events.enabled else None
        #: the store takes rows (no event object per event): asked once, a runtime Protocol check is slow
        self._rows = isinstance(self.store, SupportsEventRows)
        #: False: emit() returns at once (no store and no metrics)
        self.active = self.store is not None or metrics is not None
        self.processed = 0
        self.failed = 0
        #: events dropped because the buffer was full (the store slow or down)
        self.dropped = 0
        self.started_at = time.time()
        #: TaskEvent's fields, in its order, per event
        self._buffer: deque[_Fields] = deque(maxlen=BUFFER_SIZE)
        self._running: dict[str, float] = {}  # task uuid -> perf_counter at "started"
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    # the worker's calls ---------------------------------------------------------------------------
    def emit(self, kind: TaskEventKind, sig: Signature, queue: str = "", error: str | None = None) -> None:
        """Record that ``sig`` reached ``kind``. Never raises, never blocks."""
        if not self.active:
            return
        try:
            self._emit(kind, sig, queue or sig.routing_key or self.app.config.default_queue, error)
        except Exception:  # observability must never fail a task
            logger.debug("recording a %s event failed", kind, exc_info=True)

    def _emit(self, kind: TaskEventKind, sig: Signature, queue: str, error: str | None) -> None:
        runtime = None
        if kind == "started":
            self._running[sig.uuid] = time.perf_counter()
        elif kind != "received":
            began = self._running.pop(sig.uuid, None)
            if began is not None and kind in ("succeeded", "failed"):
                runtime = time.perf_counter() - began
            if kind != "retried":
                with self._lock:
                    self.processed += 1
                    self.failed += kind != "succeeded"
        if self.metrics is not None:
            self.metrics.task(kind, sig.name, queue, runtime)
        if self.store is None:
            return
        signature = None
        if self.app.config.events.record_args:
            signature = json.loads(codec.encode_signature(sig))
        trace_id = tracing.trace_id_of(sig) if sig.headers else None
        # the task's thread buffers the event's fields; the writer thread makes the TaskEvent (a frozen
        # dataclass costs several times a tuple to build)
        buffer = self._buffer
        with self._lock:  # the buffer's order is the order of ``at`` (recent_events is newest first)
            if len(buffer) == buffer.maxlen:
                self.dropped += 1  # the append drops the oldest
            buffer.append(
                (
                    kind,
                    sig.uuid,
                    sig.name,
                    queue,
                    self.worker_id,
                    time.time(),
                    runtime,
                    error,
                    sig.group_uuid or None,
                    trace_id,
                    signature,
                )
            )
        if len(buffer) >= BATCH_SIZE:
            self._wake.set()

    def attach_metrics(self, metrics: WorkerMetrics) -> None:
        """Count task events in ``metrics`` too (from now on)."""
        self.metrics = metrics
        self.active = True

    # the background thread ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the writer thread (only when there is a store to write to)."""
        if self.store is None or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"machinery-events-{self.worker_id}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Write what is buffered and a last heartbeat (within :data:`CLOSE_TIMEOUT`), stop the thread."""
        metrics, self.metrics = self.metrics, None
        self.active = self.store is not None
        if metrics is not None:
            metrics.close()
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        self._wake.set()
        thread.join(CLOSE_TIMEOUT)
        if thread.is_alive():
            logger.warning(
                "the events store did not answer within %.0fs; the last events are lost", CLOSE_TIMEOUT
            )
        if self.dropped:
            logger.info("%d task events were dropped while the events store was slow or down", self.dropped)

    def _run(self) -> None:
        next_beat = 0.0
        while True:
            stopping = self._stop.is_set()
            now = time.monotonic()
            if now >= next_beat or stopping:
                self._guard("heartbeat", self._beat)
                next_beat = now + float(self.app.config.worker.heartbeat_interval)
            while self._buffer:
                if not self._guard("events", self._flush):
                    break
            if stopping:
                return
            self._wake.wait(min(FLUSH_INTERVAL, max(0.0, next_beat - time.monotonic())))
            self._wake.clear()

    def _flush(self) -> None:
        buffer = self._buffer
        rows = [buffer.popleft() for _ in range(min(len(buffer), BATCH_SIZE))]
        if not rows:
            return
        store = self.store
        assert store is not None
        try:
            if self._rows:
                cast(SupportsEventRows, store).record_event_rows(rows)
            else:
                store.record_events([TaskEvent(*row) for row in rows])
        except Exception:
            self.dropped += len(rows)  # retrying would only make a slow store slower
            raise

    def heartbeat(self, stopped: bool = False) -> WorkerHeartbeat:
        """This worker's heartbeat as of now (``stopped``: its last, sent when it stops cleanly)."""
        from .. import __version__  # machinery/__init__ imports the worker: not at module level

        return WorkerHeartbeat(
            worker=self.worker_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            queues=self.queues,
            concurrency=self.concurrency,
            busy=self.busy(),
            processed=self.processed,
            failed=self.failed,
            version=__version__,
            started_at=self.started_at,
            sent_at=time.time(),
            interval=float(self.app.config.worker.heartbeat_interval),
            stopped=stopped,
        )

    def _beat(self) -> None:
        assert self.store is not None
        self.store.record_heartbeat(self.heartbeat(stopped=self._stop.is_set()))

    def _guard(self, what: str, write: Callable[[], Any]) -> bool:
        """Run one write; a failure is logged once (then at DEBUG until the store is back)."""
        try:
            write()
        except Exception as exc:
            if not self._failing:
                self._failing = True
                logger.warning(
                    "the events store failed (%s: %s); task events and heartbeats are dropped until it is "
                    "back (tasks are not affected)",
                    what,
                    exc,
                )
            else:
                logger.debug("the events store still fails (%s: %s)", what, exc)
            self._stop.wait(1.0)  # do not hammer a store that is down
            return False
        if self._failing:
            self._failing = False
            logger.info("the events store is back (%d events dropped so far)", self.dropped)
        return True


class NullEmitter:
    """The emitter of a runner outside a worker (eager mode): records nothing."""

    active = False

    def emit(self, kind: TaskEventKind, sig: Signature, queue: str = "", error: str | None = None) -> None:
        return None


NO_EVENTS = NullEmitter()
