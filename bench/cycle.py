"""Where a Redis worker's wall time goes between two fetches: a timeline of its batch cycle.

    .venv/bin/python bench/cycle.py [--redis-url URL] [--n 20000] [--prefetch 1]

Queues N ``add`` tasks (batched), drains them with ONE in-process worker (concurrency 8) while marking
the time of each fetch, dispatch, task, state-writer flush and Redis round trip (sent, reply read),
then prints, over 200 cycles from the middle of the drain, each step's share of a cycle (fetch to next
fetch) and one cycle's marks. The marks wrap the worker's methods for this run only (measurement code:
they cost a few µs each). Uses database 9 of the URL's server and empties it: use a private server.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CYCLES = 200
MARKS: list[tuple[float, str]] = []


def _mark(what: str) -> None:
    MARKS.append((time.perf_counter(), what))


def _wrap(owner: Any, name: str, before: str, after: str) -> None:
    """Mark ``before`` and ``after`` around ``owner.name`` (a function or method)."""
    inner: Callable[..., Any] = getattr(owner, name)

    def marked(*args: Any, **kwargs: Any) -> Any:
        _mark(before)
        try:
            return inner(*args, **kwargs)
        finally:
            _mark(after)

    setattr(owner, name, marked)


def _instrument(app: Any) -> None:
    from machinery.worker import statewriter, worker
    from machinery_redis import _redispy

    _wrap(app.broker, "consume", "fetch>", "fetch<")
    _wrap(worker.Worker, "_dispatch", "dispatch>", "dispatched")
    _wrap(worker.Worker, "_process", "task>", "task<")
    _wrap(statewriter.StateWriter, "_flush", "flush>", "flush<")
    send, read = _redispy.send_commands, _redispy.read_replies

    def thread() -> str:
        name = threading.current_thread().name.removeprefix("machinery").lstrip("_-")
        return name.removeprefix("worker-")[:12]

    def send_commands(conn: Any, commands: Any) -> Any:
        _mark(f"{thread()}:send>")
        try:
            return send(conn, commands)
        finally:
            _mark(f"{thread()}:sent")

    def read_replies(conn: Any, count: int) -> Any:
        try:
            return read(conn, count)
        finally:
            _mark(f"{thread()}:reply")

    _redispy.send_commands = send_commands  # type: ignore[assignment]
    _redispy.read_replies = read_replies  # type: ignore[assignment]


def _report() -> None:
    fetches = [i for i, (_, what) in enumerate(MARKS) if what == "fetch>"]
    middle = max(0, len(fetches) // 2 - CYCLES // 2)
    chosen = list(itertools.pairwise(fetches[middle:]))[:CYCLES]
    steps: collections.defaultdict[str, list[float]] = collections.defaultdict(list)
    cycles = []
    for first, last in chosen:
        cycle = MARKS[first : last + 1]
        cycles.append((cycle[-1][0] - cycle[0][0]) * 1e6)
        for (t0, a), (t1, b) in itertools.pairwise(cycle):
            steps[f"{a} -> {b}"].append((t1 - t0) * 1e6)
    if not cycles:
        print("too few fetches to time a cycle")
        return
    print(f"{len(cycles)} cycles, mean {sum(cycles) / len(cycles):,.0f} µs from one fetch to the next")
    print("µs per cycle  times per cycle  step")
    for step, spans in sorted(steps.items(), key=lambda kv: -sum(kv[1]))[:20]:
        print(f"{sum(spans) / len(cycles):12.1f}  {len(spans) / len(cycles):15.2f}  {step}")
    first, last = chosen[len(chosen) // 2]
    start = MARKS[first][0]
    print("one cycle:", " ".join(f"{what}@{(t - start) * 1e6:.0f}" for t, what in MARKS[first : last + 1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--prefetch", type=int, default=1, help="Config.worker.prefetch_multiplier")
    args = p.parse_args()
    url = args.redis_url.rsplit("/", 1)[0] + "/9"
    os.environ.update(BROKER=url, RESULT_BACKEND=url, DEFAULT_QUEUE="bench_cycle")

    import redis

    from bench.tasks import make_app
    from bench.threadcpu import queue_adds, redis_busy
    from machinery import Config

    client = redis.Redis.from_url(url)
    client.flushdb()
    app = make_app(Config.from_env())
    app.config.worker.prefetch_multiplier = args.prefetch
    queue_adds(app, args.n)
    _instrument(app)
    worker = app.worker(concurrency=8)
    started = time.monotonic()
    thread = worker.launch_async()
    while redis_busy(client, "bench_cycle"):
        time.sleep(0.01)
    elapsed = time.monotonic() - started
    worker.quit()
    thread.join(10)
    print(f"{args.n / elapsed:,.0f} tasks/s with the marks (prefetch x{args.prefetch})")
    _report()
    client.flushdb()


if __name__ == "__main__":
    main()
