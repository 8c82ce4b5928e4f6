"""Go Machinery's example tasks (``example/tasks/tasks.go`` and the integration suite), in Python.

Run a worker for them and send one::

    machinery worker -A examples.tasks:app --concurrency 4
    machinery send -A examples.tasks:app add 1 2 --wait          # add 3 ... SUCCESS 3

Both processes must use the same broker and backend: ``MACHINERY_BROKER`` and
``MACHINERY_BACKEND`` (default: one SQLite file in the temp directory, so a worker and a producer
started from different directories still meet).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time

from machinery import Config, Machinery, current_signature

DEFAULT_URL = "sqlite:///" + os.path.join(tempfile.gettempdir(), "machinery-demo.db")

app = Machinery(
    Config(
        broker=os.environ.get("MACHINERY_BROKER", DEFAULT_URL),
        result_backend=os.environ.get("MACHINERY_BACKEND", os.environ.get("MACHINERY_BROKER", DEFAULT_URL)),
    )
)
log = logging.getLogger("examples.tasks")


@app.task
def add(*args: int) -> int:
    """The sum of the arguments (Go: ``Add(args ...int64)``)."""
    return sum(args)


@app.task
def multiply(*args: int) -> int:
    """The product of the arguments (Go: ``Multiply(args ...int64)``)."""
    return math.prod(args)


@app.task
def sum_ints(numbers: list[int]) -> int:
    return sum(numbers)


@app.task
def sum_floats(numbers: list[float]) -> float:
    return sum(numbers)


@app.task
def concat(strs: list[str]) -> str:
    return "".join(strs)


@app.task
def split(text: str) -> list[str]:
    """``"foo"`` → ``["f", "o", "o"]`` (Go: ``strings.Split(str, "")``)."""
    return list(text)


@app.task
def panic_task() -> str:
    """Go's task panics with the error "oops"; here it raises, and the task fails with "oops"."""
    raise Exception("oops")


@app.task
def return_just_error(msg: str, fail: bool) -> None:
    """Fails with exactly ``msg`` when ``fail`` (Go's integration suite: "Test error")."""
    if fail:
        raise Exception(msg)


@app.task
def return_multiple_values(a: str, b: str, fail: bool = False) -> tuple[str, str]:
    """Two results: ``("foo", "bar")`` → ``get()`` gives the tuple ``("foo", "bar")``."""
    if fail:
        raise Exception("some error")
    return a, b


@app.task
def delay_test() -> int:
    """The time it ran, in Unix nanoseconds: sent with an ETA, it must be at or after the ETA."""
    return time.time_ns()


@app.task
def flaky(failures: int, retries: int) -> int:
    """Fails its first ``failures`` runs, then returns how many runs it took.

    Send it with ``retry_count=retries``: the worker lowers the signature's ``retry_count`` by one
    on each retry, so the run number is ``retries - retry_count + 1``, the same in whatever thread
    or process the run happens (deterministic: no shared counter needed).
    """
    sig = current_signature()
    left = sig.retry_count if sig is not None else 0
    attempt = retries - left + 1
    if attempt <= failures:
        raise Exception(f"failure {attempt} of {failures}")
    return attempt


@app.task
def long_running_task(seconds: float = 10.0) -> None:
    """Counts down for ``seconds`` (Go's version: 10 s), logging each second; returns nothing."""
    log.info("Long running task started")
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        log.info("%d", math.ceil(left))
        time.sleep(min(1.0, left))
    log.info("Long running task finished")
