"""What both Dramatiq peers share: Redis results, the ``Ready`` middleware (it tells the benchmark when
the worker consumes) and the ``add`` actor, on whichever broker the peer runs."""
# mypy: ignore-errors

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.middleware import Middleware
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("BENCH_QUEUE", "bench")


class Ready(Middleware):
    """Writes the time into ``BENCH_READY_FILE`` once the worker has started its consumers."""

    def after_worker_boot(self, broker, worker):
        path = os.environ.get("BENCH_READY_FILE", "")
        if path:
            with open(path, "w") as f:
                f.write(f"{time.time():.6f}\n")


def serve_add(broker):
    """Make ``broker`` Dramatiq's broker, with results in Redis and the ``Ready`` middleware, and declare
    ``add(x, y)`` on it; returns ``(results, add)``."""
    results = RedisBackend(url=REDIS_URL)
    broker.add_middleware(Results(backend=results))
    broker.add_middleware(Ready())
    dramatiq.set_broker(broker)

    @dramatiq.actor(store_results=True, queue_name=QUEUE, max_retries=0)
    def add(x, y):
        return x + y

    return results, add
