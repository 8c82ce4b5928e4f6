"""Dramatiq's side of the peer benchmark: Redis broker, Redis results, ``add(x, y)``.

Environment: ``BENCH_REDIS_URL``, ``BENCH_QUEUE``, and ``BENCH_READY_FILE`` (a file the worker
writes the wall-clock time into once it has booted and consumes). Worker:
``dramatiq bench.peers.dramatiq_app --processes 1 --threads 8``.
"""
# mypy: ignore-errors

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from bench.peers.dramatiq_ready import Ready

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("BENCH_QUEUE", "bench")


results = RedisBackend(url=URL)
broker = RedisBroker(url=URL)
broker.add_middleware(Results(backend=results))
broker.add_middleware(Ready())
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True, queue_name=QUEUE, max_retries=0)
def add(x, y):
    return x + y
