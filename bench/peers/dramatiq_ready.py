"""The middleware both Dramatiq peers share: it tells the benchmark when the worker consumes."""
# mypy: ignore-errors

from __future__ import annotations

import os
import time

from dramatiq.middleware import Middleware


class Ready(Middleware):
    """Writes the time into ``BENCH_READY_FILE`` once the worker has started its consumers."""

    def after_worker_boot(self, broker, worker):
        path = os.environ.get("BENCH_READY_FILE", "")
        if path:
            with open(path, "w") as f:
                f.write(f"{time.time():.6f}\n")
