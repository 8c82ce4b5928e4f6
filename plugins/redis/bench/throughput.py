"""Throughput of the Redis plugin next to a minimal redis-py loop, measured in the same run.

    python plugins/redis/bench/throughput.py [--url redis://127.0.0.1:6379/0] [--tasks 10000]
                                             [--concurrency 8] [--parser hiredis|python]

1. enqueue: ``--tasks`` ``add(i, i)`` tasks with ``app.send_task`` one by one, then the same count with
   ``app.send_tasks`` in batches of 100;
2. drain: one worker (``app.worker(concurrency=N)``) runs them all (results stored); tasks/s from its start
   to the last SUCCESS;
3. baseline: the same count of messages drained by a minimal loop (``LPOP`` count 100, decode, add,
   pipelined ``SET`` of a result), the design doc's "redis-py minimal" reference;
4. latency: send → result p50/p90 over 300 sequential round trips with the worker running.

Only keys with a random prefix are touched, and deleted at the end. Prints one line per figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
import uuid
from typing import Any

import orjson
import redis

from machinery import Config, Machinery, codec
from machinery.signature import Signature


def _client(url: str, parser: str) -> redis.Redis:
    from redis._parsers import _HiredisParser, _RESP2Parser

    pool = redis.ConnectionPool.from_url(
        url, parser_class=_HiredisParser if parser == "hiredis" else _RESP2Parser
    )
    return redis.Redis(connection_pool=pool)


class Counter:
    """Counts task runs; ``done`` is set at ``target``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.target = -1
        self.done = threading.Event()

    def reset(self, target: int) -> None:
        with self.lock:
            self.count, self.target = 0, target
            self.done.clear()

    def hit(self) -> None:
        with self.lock:
            self.count += 1
            if self.count == self.target:
                self.done.set()


COUNTER = Counter()


def make_app(url: str, queue: str, parser: str) -> Machinery:
    config = Config(broker=url, result_backend=url, default_queue=queue)
    config.redis.delayed_tasks_key = f"{queue}:delayed"
    config.redis.client = _client(url, parser)
    config.worker.shutdown_grace = 5.0
    app = Machinery(config)

    @app.task
    def add(x: int, y: int) -> int:
        COUNTER.hit()
        return x + y

    return app


def enqueue(app: Machinery, n: int) -> tuple[float, float]:
    task = app.tasks["add"]
    t0 = time.perf_counter()
    for i in range(n):
        app.send_task(task.s(i, i))
    single = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for start in range(0, n, 100):
        app.send_tasks([task.s(i, i) for i in range(start, min(n, start + 100))])
    batched = n / (time.perf_counter() - t0)
    return single, batched


def drain(app: Machinery, uuids: list[str], concurrency: int) -> float:
    """Tasks/s from the worker's start until every result is stored (SUCCESS)."""
    n = len(uuids)
    COUNTER.reset(n)
    worker = app.worker(concurrency=concurrency)
    t0 = time.perf_counter()
    thread = worker.launch_async()
    if not COUNTER.done.wait(600):
        raise SystemExit(f"drain did not finish: {COUNTER.count}/{n}")
    stored = app.backend.wait(uuids, 60)
    elapsed = time.perf_counter() - t0
    if len(stored) != n or not all(s.is_success for s in stored.values()):
        raise SystemExit(f"only {len(stored)}/{n} results stored")
    worker.quit()
    thread.join(30)
    return n / elapsed


def baseline_enqueue(url: str, queue: str, n: int, parser: str) -> tuple[float, float]:
    """The minimal producer: a message dict encoded with orjson and RPUSHed, one per round trip, then
    100 per round trip."""
    client = _client(url, parser)

    def message(i: int) -> bytes:
        fields = {"UUID": f"task_{uuid.uuid4()}", "Name": "add", "RoutingKey": queue, "Args": [i, i]}
        return orjson.dumps(fields)

    t0 = time.perf_counter()
    for i in range(n):
        client.rpush(queue, message(i))
    single = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for start in range(0, n, 100):
        client.rpush(queue, *[message(i) for i in range(start, start + 100)])
    batched = n / (time.perf_counter() - t0)
    client.delete(queue)
    return single, batched


def baseline(url: str, queue: str, n: int, parser: str) -> float:
    client = _client(url, parser)
    sig = Signature("add", [1, 1], routing_key=queue)
    bodies = []
    for _ in range(n):
        sig.uuid = f"task_{uuid.uuid4()}"
        bodies.append(codec.encode_signature(sig))
    pipe = client.pipeline(transaction=False)
    for start in range(0, n, 1000):
        pipe.rpush(queue, *bodies[start : start + 1000])
    pipe.execute()
    t0 = time.perf_counter()
    processed = 0
    while processed < n:
        batch = client.lpop(queue, 100)
        if not batch:
            break
        pipe = client.pipeline(transaction=False)
        for raw in batch:
            msg: Any = orjson.loads(raw)
            result = sum(a["Value"] for a in msg["Args"])
            pipe.set(msg["UUID"], orjson.dumps({"State": "SUCCESS", "Results": [result]}), ex=3600)
        pipe.execute()
        processed += len(batch)
    elapsed = time.perf_counter() - t0
    pipe = client.pipeline(transaction=False)
    for raw in bodies:
        pipe.delete(orjson.loads(raw)["UUID"])
    pipe.execute()
    return processed / elapsed


def latency(app: Machinery, rounds: int) -> tuple[float, float]:
    worker = app.worker(concurrency=8)
    thread = worker.launch_async()
    task = app.tasks["add"]
    app.send_task(task.s(0, 0)).get(timeout=10)  # warm up
    samples = []
    for i in range(rounds):
        t0 = time.perf_counter()
        app.send_task(task.s(i, 1)).get(timeout=10)
        samples.append(time.perf_counter() - t0)
    worker.quit()
    thread.join(30)
    q = statistics.quantiles(samples, n=10)
    return statistics.median(samples) * 1000, q[8] * 1000


def cleanup(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--parser", choices=("hiredis", "python"), default="hiredis")
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    queue = f"{prefix}_tasks"
    app = make_app(args.url, queue, args.parser)
    try:
        single, batched = enqueue(app, args.tasks)
        app.broker.purge(queue)
        sent = app.send_tasks([app.tasks["add"].s(i, i) for i in range(args.tasks)])
        processed = drain(app, [r.uuid for r in sent], args.concurrency)
        minimal = baseline(args.url, f"{prefix}_minimal", args.tasks, args.parser)
        min_single, min_batched = baseline_enqueue(
            args.url, f"{prefix}_minimal_enqueue", args.tasks, args.parser
        )
        print(f"parser {args.parser}, {args.tasks} tasks, concurrency {args.concurrency}, {args.url}")
        print(
            f"enqueue: {single:,.0f}/s one by one "
            f"(minimal RPUSH {min_single:,.0f}/s: {single / min_single:.0%}), "
            f"{batched:,.0f}/s in batches of 100 (minimal {min_batched:,.0f}/s: {batched / min_batched:.0%})"
        )
        print(
            f"processed: {processed:,.0f} tasks/s (worker) vs {minimal:,.0f}/s (minimal loop): "
            f"{processed / minimal:.0%}"
        )
        if not args.skip_latency:
            p50, p90 = latency(app, 300)
            print(f"send -> result: p50 {p50:.2f} ms, p90 {p90:.2f} ms")
    finally:
        app.close()
        cleanup(args.url, prefix)


if __name__ == "__main__":
    main()
