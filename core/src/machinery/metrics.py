"""Prometheus metrics of a worker: ``machinery worker --metrics-port 9808`` serves ``/metrics``.

Needs the optional extra ``pip install 'machinery-core[metrics]'`` (prometheus-client); without it
nothing is imported or collected, and asking for a metrics port is a clear error. The server is
prometheus_client's own, on a registry of this worker only, stopped when the worker stops.

==========================================  =========  ==========================================
name                                        type       labels / meaning
==========================================  =========  ==========================================
machinery_tasks_received_total              counter    task, queue
machinery_tasks_started_total               counter    task, queue
machinery_tasks_succeeded_total             counter    task, queue
machinery_tasks_failed_total                counter    task, queue
machinery_tasks_retried_total               counter    task, queue
machinery_tasks_dead_lettered_total         counter    task, queue
machinery_task_runtime_seconds              histogram  task, queue: run time of finished tasks
machinery_worker_busy_slots                 gauge      messages held (running or about to)
machinery_worker_free_slots                 gauge      concurrency minus busy
machinery_queue_depth                       gauge      queue: waiting messages, where the broker
                                                       can count them (``SupportsDepth``)
==========================================  =========  ==========================================
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .broker import SupportsDepth
from .log import logger

__all__ = ["METRICS_EXTRA_HINT", "MetricsUnavailableError", "WorkerMetrics", "available"]

METRICS_EXTRA_HINT = "pip install 'machinery-core[metrics]'"
#: seconds a queue depth is cached (a scrape every few seconds must not hammer the broker)
DEPTH_CACHE_SECONDS = 10.0
_KINDS = ("received", "started", "succeeded", "failed", "retried", "dead_lettered")


class MetricsUnavailableError(RuntimeError):
    """A metrics port was asked for without prometheus-client installed."""


def available() -> bool:
    """True when prometheus-client is installed."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


class WorkerMetrics:
    """The metrics of one worker, on their own registry, served on ``port`` once :meth:`serve` ran."""

    def __init__(
        self,
        busy: Callable[[], int],
        concurrency: int,
        broker: object = None,
        queues: Sequence[str] = (),
    ) -> None:
        try:
            import prometheus_client as prom
        except ImportError as exc:
            raise MetricsUnavailableError(f"metrics need prometheus-client: {METRICS_EXTRA_HINT}") from exc
        self._prom: Any = prom
        self.registry = prom.CollectorRegistry(auto_describe=True)
        labels = ("task", "queue")
        self.counters = {
            kind: prom.Counter(
                f"machinery_tasks_{kind}",
                f"Tasks {kind.replace('_', '-')} by this worker",
                labels,
                registry=self.registry,
            )
            for kind in _KINDS
        }
        self.runtime = prom.Histogram(
            "machinery_task_runtime_seconds",
            "Run time of the tasks this worker finished (succeeded or failed)",
            labels,
            registry=self.registry,
        )
        busy_gauge = prom.Gauge(
            "machinery_worker_busy_slots", "Messages this worker holds", registry=self.registry
        )
        busy_gauge.set_function(lambda: float(busy()))
        free = prom.Gauge(
            "machinery_worker_free_slots", "Slots free for new messages", registry=self.registry
        )
        free.set_function(lambda: float(max(0, concurrency - busy())))
        if isinstance(broker, SupportsDepth) and queues:
            self.registry.register(_DepthCollector(prom, broker, tuple(queues)))
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def task(self, kind: str, task: str, queue: str, runtime: float | None) -> None:
        """Count one task event (and its run time)."""
        self.counters[kind].labels(task, queue).inc()
        if runtime is not None:
            self.runtime.labels(task, queue).observe(runtime)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``host:port`` (prometheus_client's server); returns the port bound
        (useful with port 0)."""
        self._server, self._thread = self._prom.start_http_server(port, addr=host, registry=self.registry)
        bound = int(self._server.server_address[1])
        logger.info("metrics served on http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        """Stop the HTTP server and its thread. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


class _DepthCollector:
    """``machinery_queue_depth`` per queue, asked of the broker at scrape time (cached)."""

    def __init__(self, prom: Any, broker: SupportsDepth, queues: tuple[str, ...]) -> None:
        self.prom = prom
        self.broker = broker
        self.queues = queues
        self._cache: tuple[float, dict[str, int]] = (0.0, {})
        self._lock = threading.Lock()

    def describe(self) -> list[Any]:
        return [self.prom.metrics_core.GaugeMetricFamily("machinery_queue_depth", "", labels=["queue"])]

    def collect(self) -> Iterator[Any]:
        family = self.prom.metrics_core.GaugeMetricFamily(
            "machinery_queue_depth",
            "Messages waiting in the queue (where the broker can count)",
            labels=["queue"],
        )
        for queue, depth in self._depths().items():
            family.add_metric([queue], depth)
        yield family

    def _depths(self) -> dict[str, int]:
        with self._lock:
            at, depths = self._cache
            if time.monotonic() - at < DEPTH_CACHE_SECONDS:
                return depths
            depths = {}
            for queue in self.queues:
                try:
                    depth = self.broker.depth(queue)
                except Exception as exc:  # a scrape must not fail because the broker is down
                    logger.debug("queue depth of %s unavailable: %s", queue, exc)
                    continue
                if depth is not None:
                    depths[queue] = depth
            self._cache = (time.monotonic(), depths)
            return depths
