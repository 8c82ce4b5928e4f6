"""The tasks of the worker contract: Machinery's integration-test tasks plus a few that count runs.

Importable, so a worker in another process registers the same tasks::

    app = make_app("sqlite:///x.db", "sqlite:///x.db", config, runlog="/tmp/runs")

Run counting goes through :class:`~machinery.testing._util.RunLog` (a directory of append-only files),
which works across worker processes without help from the backend under test.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from ..app import Machinery
from ..backend import Backend
from ..broker import Broker
from ..config import Config
from ._util import RunLog

__all__ = ["TASK_NAMES", "make_app"]

TASK_NAMES = (
    "add",
    "multiply",
    "sum",
    "return_just_error",
    "return_multiple_values",
    "panic",
    "delay_test",
    "flaky",
    "record",
    "sleep_record",
    "hold",
)


def make_app(
    broker_url: str = "",
    backend_url: str = "",
    config: Config | None = None,
    *,
    runlog: str | None = None,
    only: Iterable[str] | None = None,
    broker: Broker | None = None,
    backend: Backend | None = None,
) -> Machinery:
    """A Machinery app with the contract tasks registered (all of them, or those named in ``only``).

    URLs given here override ``config.broker`` / ``config.result_backend``; ready objects override both.
    """
    config = config if config is not None else Config()
    if broker_url:
        config.broker = broker_url
    if backend_url:
        config.result_backend = backend_url
    app = Machinery(config, broker=broker, backend=backend)
    log = RunLog(runlog) if runlog else None

    def runs() -> RunLog:
        if log is None:
            raise RuntimeError("this task needs make_app(..., runlog=DIR)")
        return log

    def add(*args: int) -> int:
        return sum(args)

    def multiply(*args: int) -> int:
        product = 1
        for value in args:
            product *= value
        return product

    def sum_(values: list[int]) -> int:
        return sum(values)

    def return_just_error(message: str, fail: bool) -> None:
        if fail:
            raise Exception(message)

    def return_multiple_values(a: str, b: str, fail: bool) -> tuple[str, str]:
        if fail:
            raise Exception("some error")
        return a, b

    def panic() -> str:
        raise RuntimeError("oops")

    def delay_test() -> int:
        return time.time_ns()

    def flaky(key: str, failures: int) -> int:
        """Fails ``failures`` times (counted across processes), then returns its run number."""
        runs().append(key, "run")
        n = runs().count(key, "run")
        if n <= failures:
            raise ValueError(f"flaky failure {n}")
        return n

    def record(key: str) -> str:
        runs().append(key, "done")
        return key

    def sleep_record(key: str, seconds: float) -> str:
        runs().append(key, "start")
        time.sleep(seconds)
        runs().append(key, "done")
        return key

    def hold(key: str, seconds: float) -> int:
        """Its first run blocks for ``seconds`` (to be killed meanwhile); later runs finish at once."""
        runs().append(key, "start")
        started = runs().count(key, "start")
        if started == 1:
            time.sleep(seconds)
        runs().append(key, "done")
        return started

    tasks: dict[str, Callable[..., Any]] = {
        "add": add,
        "multiply": multiply,
        "sum": sum_,
        "return_just_error": return_just_error,
        "return_multiple_values": return_multiple_values,
        "panic": panic,
        "delay_test": delay_test,
        "flaky": flaky,
        "record": record,
        "sleep_record": sleep_record,
        "hold": hold,
    }
    wanted = set(only) if only is not None else set(tasks)
    unknown = wanted - set(tasks)
    if unknown:
        raise ValueError(f"unknown contract tasks: {sorted(unknown)}")
    app.register_tasks({name: fn for name, fn in tasks.items() if name in wanted})
    return app
