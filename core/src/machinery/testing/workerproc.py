"""A worker in its own process for the contract kit: ``python -m machinery.testing.workerproc SPEC``.

SPEC is a pickled dict: ``config`` (a Config whose ``broker``/``result_backend`` are set), ``runlog``,
``only`` (task names or None), ``concurrency``, ``queue``, ``tag``, ``plugin_modules``, ``pool``.
Prints ``ready <pid>`` once it consumes; SIGTERM stops it gracefully, SIGKILL is the fault test.
"""

from __future__ import annotations

import logging
import pickle
import sys
from typing import Any

from ..config import Config
from ..worker import Worker
from .procs import _register, say
from .tasks import make_app

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    with open(args[0], "rb") as f:
        spec: dict[str, Any] = pickle.load(f)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    _register(spec.get("plugin_modules", []))
    config: Config = spec["config"]
    config.no_unix_signals = False
    app = make_app(config=config, runlog=spec.get("runlog"), only=spec.get("only"))
    worker = app.worker(
        spec.get("tag", "contract-worker"),
        concurrency=int(spec.get("concurrency", 4)),
        queue=spec.get("queue"),
        pool=spec.get("pool", "thread"),
    )
    announced: list[bool] = []

    def ready(w: Worker) -> bool:
        if not announced:
            announced.append(True)
            import os

            say(f"ready {os.getpid()}")
        return True

    worker.set_pre_consume_handler(ready)
    try:
        worker.launch()
    finally:
        app.close()
        say("stopped")


if __name__ == "__main__":
    main()
