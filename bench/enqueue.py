"""Batched enqueue of Machinery on Redis against the bare loop's, interleaved round by round.

    .venv/bin/python bench/enqueue.py [--redis-url URL] [--rounds 7] [--batches 5] [--batch 1000]

Each round times ``--batches`` batches of the bare loop (one pipelined ``RPUSH`` of JSON bodies, as in
run.py) and then of Machinery's ``send_tasks`` (PENDING states and the messages in one round trip), on
database 9 of the URL's server, and prints both rates and their ratio: per round and the median. A
quicker and steadier reading of run.py's *enqueue/s batched* ratio (no worker, no drain); the client's
CPU per task is printed too. Deletes what it wrote.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.systems import BaselineSystem, MachinerySystem  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--batches", type=int, default=5, help="batches per system per round")
    p.add_argument("--batch", type=int, default=1000)
    args = p.parse_args()
    url = args.redis_url.rsplit("/", 1)[0] + "/9"
    bare, machinery = BaselineSystem(url), MachinerySystem("redis/redis", url, url)
    rates: dict[str, list[float]] = {"bare": [], "machinery": []}
    cpu: list[float] = []
    ratios: list[float] = []
    bare.setup()
    machinery.setup()
    try:
        for _ in range(args.rounds):
            for name, system in (("bare", bare), ("machinery", machinery)):
                started, cpu_started = time.perf_counter(), time.process_time()
                for k in range(args.batches):
                    system.enqueue_batch(k * args.batch, args.batch)
                count = args.batches * args.batch
                rates[name].append(count / (time.perf_counter() - started))
                if name == "machinery":
                    cpu.append((time.process_time() - cpu_started) / count * 1e6)
            ratios.append(rates["machinery"][-1] / rates["bare"][-1])
            bare_rate, our_rate = rates["bare"][-1], rates["machinery"][-1]
            print(f"bare {bare_rate:9,.0f}/s  machinery {our_rate:9,.0f}/s  {ratios[-1]:.2f}x")
    finally:
        bare.cleanup()
        machinery.cleanup()
    print(
        f"median: bare {statistics.median(rates['bare']):,.0f}/s, machinery "
        f"{statistics.median(rates['machinery']):,.0f}/s (client CPU {statistics.median(cpu):.1f} µs/task), "
        f"ratio {statistics.median(ratios):.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f})"
    )


if __name__ == "__main__":
    main()
