"""Throughput and latency of the SQS broker with the DynamoDB (or Redis) backend, on the local test server.

    eval "$(scripts/services env)"
    python plugins/sqs/bench/throughput.py [--backend dynamodb|redis] [--tasks 1000] [--concurrency 8]

1. enqueue: ``--tasks`` ``add(i, i)`` tasks with ``app.send_task`` one by one, then the same count with
   ``app.send_tasks`` in batches of 100 (``SendMessageBatch``, PENDING states in ``BatchWriteItem``);
2. drain: one worker (``app.worker(concurrency=N)``, in this process) runs them all; tasks/s from its start
   to the last SUCCESS;
3. latency: send → result p50/p90 over 100 sequential round trips with the worker running.

Against moto (a Python emulator on the same 2 cores) these figures say how much work the plugin does per
task, not what AWS does: there each call is a network round trip (about 5-20 ms within a region), so
throughput comes from concurrency and batching. Uses its own queue; prints one line per figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

from machinery import Config, Machinery
from machinery.signature import Signature


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=("dynamodb", "redis"), default="dynamodb")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    queue = f"bench_{uuid.uuid4().hex[:8]}"
    backend = "dynamodb://" if args.backend == "dynamodb" else os.environ["REDIS_URL"]
    config = Config(broker=os.environ["SQS_BROKER_URL"], result_backend=backend, default_queue=queue)
    config.no_unix_signals = True
    app = Machinery(config)

    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    n = args.tasks
    started = time.perf_counter()
    results = [app.send_task(Signature("add", args=[i, i])) for i in range(n)]
    one_by_one = n / (time.perf_counter() - started)
    started = time.perf_counter()
    for start in range(0, n, 100):
        results += app.send_tasks([Signature("add", args=[i, i]) for i in range(start, min(n, start + 100))])
    batched = n / (time.perf_counter() - started)
    print(f"sqs/{args.backend}: enqueue {one_by_one:.0f}/s one by one, {batched:.0f}/s in batches of 100")

    worker = app.worker("bench", concurrency=args.concurrency, queue=queue)
    started = time.perf_counter()
    thread = worker.launch_async()
    for result in results:
        result.get(timeout=600)
    drained = len(results) / (time.perf_counter() - started)
    print(f"sqs/{args.backend}: drain {drained:.0f} tasks/s (1 worker, concurrency {args.concurrency})")

    latencies = []
    for i in range(100):
        sent = time.perf_counter()
        app.send_task(Signature("add", args=[i, 1])).get(timeout=30)
        latencies.append(time.perf_counter() - sent)
    p50 = statistics.median(latencies) * 1000
    p90 = statistics.quantiles(latencies, n=10)[-1] * 1000
    print(f"sqs/{args.backend}: round trip p50 {p50:.0f} ms, p90 {p90:.0f} ms")
    worker.quit()
    thread.join(30)
    app.close()


if __name__ == "__main__":
    main()
