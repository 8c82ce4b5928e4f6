"""Huey's side of the embedded peer benchmark: ``SqliteHuey`` (queue and results on one SQLite file),
``add(x, y)``.

Environment: ``BENCH_SQLITE_PATH`` (the file), ``BENCH_QUEUE`` (Huey's name for its queue) and
``BENCH_READY_FILE`` (the worker writes the wall-clock time into it once its threads start).
Worker: ``huey_consumer bench.peers.huey_app.huey -w 8 -k thread``. Huey runs from the project's own
virtualenv (the ``bench`` dependency group), not the pinned peers' one.
"""
# mypy: ignore-errors

from __future__ import annotations

import os
import threading
import time

from huey import SqliteHuey

PATH = os.environ.get("BENCH_SQLITE_PATH", "/tmp/machinery-bench-huey.db")
QUEUE = os.environ.get("BENCH_QUEUE", "bench")

huey = SqliteHuey(QUEUE, filename=PATH)
_announced = threading.Lock()


@huey.on_startup()
def _ready() -> None:
    """Runs in each worker thread as it starts: the first one writes the ready file."""
    path = os.environ.get("BENCH_READY_FILE", "")
    if path and _announced.acquire(blocking=False):
        with open(path, "w") as f:
            f.write(f"{time.time():.6f}\n")


@huey.task()
def add(x, y):
    return x + y
