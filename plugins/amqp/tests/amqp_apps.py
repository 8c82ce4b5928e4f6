"""A Machinery app for the end-to-end and fault tests; also run as a worker process:

python amqp_apps.py   (settings from the environment: see ``from_env``)
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

from machinery import Config, Machinery


def make_app(
    broker: str,
    backend: str,
    suffix: str,
    runlog: str = "",
    *,
    queue_args: dict[str, object] | None = None,
    max_deliveries: int = 5,
) -> Machinery:
    config = Config(
        broker=broker, result_backend=backend, default_queue=f"mq_{suffix}", results_expire_in=300
    )
    config.amqp.exchange = f"mx_{suffix}"
    config.amqp.binding_key = f"mk_{suffix}"
    config.amqp.prefetch_count = 0
    config.amqp.queue_declare_args = dict(queue_args or {})
    config.worker.shutdown_grace = 5.0
    config.worker.max_deliveries = max_deliveries
    app = Machinery(config)

    @app.task
    def add(*args: int) -> int:
        return sum(args)

    @app.task
    def multiply(*args: int) -> int:
        return math.prod(args)

    @app.task
    def slow(n: int, seconds: float) -> int:
        """Records its start and end in ``runlog`` (one file, O_APPEND lines), shared by processes."""
        _log(runlog, f"start {n} {os.getpid()}")
        time.sleep(seconds)
        _log(runlog, f"done {n} {os.getpid()}")
        return n

    @app.task
    def crash(n: int) -> None:
        """Kills the worker process that runs it, as an OOM kill or a segfault would."""
        _log(runlog, f"crash {n} {os.getpid()}")
        os._exit(3)

    return app


def _log(path: str, line: str) -> None:
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_log(path: str) -> list[tuple[str, int, int]]:
    try:
        with open(path) as f:
            return [(a, int(b), int(c)) for a, b, c in (line.split() for line in f if line.strip())]
    except FileNotFoundError:
        return []


def main() -> None:
    settings = json.loads(os.environ["AMQP_TEST_APP"])
    app = make_app(
        settings["broker"],
        settings["backend"],
        settings["suffix"],
        settings.get("runlog", ""),
        queue_args=settings.get("queue_args"),
        max_deliveries=settings.get("max_deliveries", 5),
    )
    print("ready", flush=True)
    app.worker(concurrency=settings.get("concurrency", 4)).launch()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
