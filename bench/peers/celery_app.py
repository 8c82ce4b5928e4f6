"""Celery's side of the peer benchmark: Redis broker and result backend, ``add(x, y)``.

Environment: ``BENCH_REDIS_URL``, ``BENCH_QUEUE``, ``BENCH_READY_FILE`` (see dramatiq_app.py).
Worker: ``celery -A bench.peers.celery_app worker --pool threads --concurrency 8``.
"""
# mypy: ignore-errors

from __future__ import annotations

import os
import time

from celery import Celery
from celery.signals import worker_ready

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("BENCH_QUEUE", "bench")

app = Celery("bench", broker=URL, backend=URL)
app.conf.task_default_queue = QUEUE
app.conf.result_expires = 900
app.conf.broker_connection_retry_on_startup = True


@worker_ready.connect
def _ready(**_kwargs):
    path = os.environ.get("BENCH_READY_FILE", "")
    if path:
        with open(path, "w") as f:
            f.write(f"{time.time():.6f}\n")


@app.task(name="add")
def add(x, y):
    return x + y
