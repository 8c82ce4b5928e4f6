"""The benchmark's app: one task, ``add(x, y)``, on the broker and backend named in the environment.

The worker runs it with the real CLI: ``python -m machinery worker -A bench.tasks:app -c 8`` with
``BROKER``, ``RESULT_BACKEND`` and ``DEFAULT_QUEUE`` set (``Config.from_env``). When
``BENCH_READY_FILE`` names a file, the worker writes the wall-clock time into it just before its
first fetch, so the benchmark can leave the worker's start-up out of the drain time (the hook is a
``pre_consume_handler`` that returns True: one Python call per fetch, nothing per task).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from functools import cache
from typing import Any, Literal

from machinery import Config, Machinery
from machinery.worker import Worker

#: Not MACHINERY_*: the core reads MACHINERY_<SECTION>_<NAME> as plugin settings (and warns of unknown ones).
READY_ENV = "BENCH_READY_FILE"


class BenchApp(Machinery):
    """A Machinery app whose workers announce when they start consuming."""

    def worker(
        self,
        consumer_tag: str = "",
        concurrency: int = 0,
        queue: str | Sequence[str] | None = None,
        pool: Literal["thread", "process"] = "thread",
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
    ) -> Worker:
        the_worker = super().worker(consumer_tag, concurrency, queue, pool, metrics_port, metrics_host)
        ready_file = os.environ.get(READY_ENV, "")
        if ready_file:
            announced = False

            def announce(_worker: Worker) -> bool:
                nonlocal announced
                if not announced:
                    announced = True
                    with open(ready_file, "w") as f:
                        f.write(f"{time.time():.6f}\n")
                return True

            the_worker.set_pre_consume_handler(announce)
        return the_worker


def make_app(config: Config) -> BenchApp:
    app = BenchApp(config)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    return app


@cache
def _from_env() -> BenchApp:
    return make_app(Config.from_env())


def __getattr__(name: str) -> Any:
    # ``bench.tasks:app`` is built from the environment on first access, not at import.
    if name == "app":
        return _from_env()
    raise AttributeError(name)
