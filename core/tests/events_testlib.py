"""Helpers of the events, metrics and inspect tests: an app on a private sqlite file, a running worker."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from machinery import Config, Machinery
from machinery.worker import Worker


def sqlite_app(tmp_path: Path, name: str = "events.db") -> Machinery:
    """An app on its own sqlite file, with fast heartbeats and quick teardowns."""
    url = f"sqlite:///{tmp_path / name}"
    config = Config(broker=url, result_backend=url)
    config.worker.poll_timeout = 0.1
    config.worker.shutdown_grace = 5.0
    config.worker.heartbeat_interval = 0.2
    config.no_unix_signals = True
    app = Machinery(config)

    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="boom")
    def boom() -> None:
        raise ValueError("boom")

    return app


@contextlib.contextmanager
def running(worker: Worker) -> Iterator[Worker]:
    """``worker`` launched in a thread, stopped (and checked stopped) when the block ends."""
    thread = worker.launch_async()
    try:
        yield worker
    finally:
        worker.quit()
        thread.join(15)
        assert not thread.is_alive(), "the worker did not stop"
        thread.raise_error()
