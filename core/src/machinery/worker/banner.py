"""The start-up banner a worker logs at INFO: what it connects to, consumes and runs (URLs redacted)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..events import events_store
from ..redact import redact_url

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["banner"]


def _events_line(worker: Worker) -> str:
    app = worker.app
    if not app.config.events.enabled:
        return "off (events.enabled is false)"
    backend = app.backend
    if events_store(backend) is None:
        return f"off ({type(backend).__name__} keeps no events)"
    args = "with arguments" if app.config.events.record_args else "without arguments"
    beat = app.config.worker.heartbeat_interval
    return f"on, {args}, heartbeat every {beat:g}s (worker id {worker.events.worker_id})"


def banner(worker: Worker) -> str:
    """Several lines, like::

    worker machinery_worker (machinery-core 0.2.0)
      broker       redis://:***@host:6379/0
      ...
    """
    from .. import __version__  # machinery/__init__ imports the worker: not at module level

    app, cfg = worker.app, worker.app.config
    metrics = (
        f"http://{worker.metrics_host}:{worker.metrics_port}/metrics"
        if worker.metrics_port is not None
        else "off"
    )
    names = sorted(app.tasks)
    rows = [
        ("broker", redact_url(cfg.broker)),
        ("backend", redact_url(cfg.result_backend)),
        ("queues", ", ".join(worker.queues)),
        ("concurrency", f"{worker.concurrency} ({worker.pool} pool)"),
        ("events", _events_line(worker)),
        ("metrics", metrics),
        (f"tasks ({len(names)})", ", ".join(names) if len(names) <= 12 else ", ".join(names[:12]) + ", ..."),
    ]
    lines = [f"worker {worker.consumer_tag} (machinery-core {__version__})"]
    lines += [f"  {label:<13}{value}" for label, value in rows]
    return "\n".join(lines)
