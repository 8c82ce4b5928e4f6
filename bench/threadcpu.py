"""Where a Redis worker's CPU goes, per thread, without a profiler (numbers to compare changes by).

    .venv/bin/python bench/threadcpu.py [--redis-url URL] [--n 10000] [--prefetch 1] [--sqlite]

Queues N ``add`` tasks (batched), drains them with ONE in-process worker (concurrency 8), then prints
the worker's CPU per task by thread (consumer, state writer, task threads; from
``/proc/self/task/*/stat``) and how much of it was spent in the kernel, the Redis server's CPU per
task and its busiest commands (``INFO commandstats``: µs and calls per task), the fetch sizes, and how
many states were written against how many were queued (the state writer coalesces). Uses database 9
of the URL's server and deletes what it wrote; the server's stats are reset (``CONFIG RESETSTAT``):
use a private server. ``--sqlite`` drains a ``sqlite://`` broker and backend on one temporary file
instead (no server figures).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _thread_cpu() -> tuple[collections.Counter[str], collections.Counter[str]]:
    """CPU seconds of this process's threads by thread name (task threads summed): all of it, and the
    part spent in the kernel."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    total: collections.Counter[str] = collections.Counter()
    kernel: collections.Counter[str] = collections.Counter()
    for path in glob.glob(f"/proc/{os.getpid()}/task/*"):
        try:
            with open(f"{path}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(path.rsplit("/", 1)[1]), "other")
        name = name.split("-task-")[0] + "-tasks" if "-task-" in name else name
        total[name] += (int(fields[11]) + int(fields[12])) / tick
        kernel[name] += int(fields[12]) / tick
    return total, kernel


def queue_adds(app: Any, n: int) -> list[str]:
    """Queue ``n`` ``add`` tasks in batches of 1,000; their uuids."""
    add = app.tasks["add"]
    sent: list[str] = []
    for start in range(0, n, 1000):
        sent += [r.uuid for r in app.send_tasks([add.s(i, i) for i in range(start, min(n, start + 1000))])]
    return sent


def redis_busy(client: Any, queue: str) -> bool:
    """Whether ``queue`` still has messages waiting or leased (its processing lists)."""
    processing = "{" + queue + "}:machinery:processing:*"
    return bool(client.llen(queue) or any(client.llen(k) for k in client.scan_iter(processing)))


def _thread_switches() -> collections.Counter[str]:
    """Context switches (voluntary: the thread waited) of this process's threads, by thread name."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: collections.Counter[str] = collections.Counter()
    for path in glob.glob(f"/proc/{os.getpid()}/task/*"):
        try:
            with open(f"{path}/status") as f:
                switches = sum(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt"))
        except OSError:
            continue
        name = names.get(int(path.rsplit("/", 1)[1]), "other")
        out[name.split("-task-")[0] + "-tasks" if "-task-" in name else name] += switches
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--prefetch", type=int, default=1, help="Config.worker.prefetch_multiplier")
    p.add_argument("--sqlite", action="store_true", help="a sqlite:// broker and backend (temporary file)")
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="machinery-threadcpu-") if args.sqlite else ""
    url = f"sqlite:///{tmp}/bench.db" if args.sqlite else args.redis_url.rsplit("/", 1)[0] + "/9"
    os.environ.update(BROKER=url, RESULT_BACKEND=url, DEFAULT_QUEUE="bench_threadcpu")
    try:
        _run(args, url)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _run(args: argparse.Namespace, url: str) -> None:
    import redis

    from bench.tasks import make_app
    from machinery import Config
    from machinery.worker import statewriter

    client = None if args.sqlite else redis.Redis.from_url(url)
    app = make_app(Config.from_env())
    app.config.worker.prefetch_multiplier = args.prefetch
    sent = queue_adds(app, args.n)
    counts: collections.Counter[str] = collections.Counter()
    coalesce = statewriter.coalesce

    def counting_coalesce(states: list[Any]) -> list[Any]:
        kept = coalesce(states)
        counts["flushes"] += 1
        counts["queued"] += len(states)
        counts["written"] += len(kept)
        return kept

    statewriter.coalesce = counting_coalesce  # type: ignore[assignment]
    consume = app.broker.consume
    sizes: collections.Counter[int] = collections.Counter()

    def counting_consume(queue: str, count: int, timeout: float) -> list[Any]:
        got = consume(queue, count, timeout)
        sizes[len(got)] += 1
        return got

    app.broker.consume = counting_consume  # type: ignore[method-assign]

    def server_cpu() -> float:
        if client is None:
            return 0.0
        info = client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def busy() -> bool:
        if client is None:
            return bool(app.broker.count("bench_threadcpu"))  # type: ignore[attr-defined]
        return redis_busy(client, "bench_threadcpu")

    if client is not None:
        client.config_resetstat()
    (before, sys_before), server_before, switches_before = _thread_cpu(), server_cpu(), _thread_switches()
    worker = app.worker(concurrency=8)
    started = time.monotonic()
    thread = worker.launch_async()
    while busy():
        time.sleep(0.01)
    elapsed = time.monotonic() - started
    (after, sys_after), server_after, switches_after = _thread_cpu(), server_cpu(), _thread_switches()
    stats = {} if client is None else client.info("commandstats")
    worker.quit()
    thread.join(10)
    n = args.n
    print(f"{n / elapsed:,.0f} tasks/s (one in-process worker, prefetch x{args.prefetch}, queue pre-filled)")
    per = {k: (after[k] - before[k]) * 1e6 / n for k in after if k != "MainThread"}
    print(
        "worker CPU µs/task by thread:", {k: round(v, 1) for k, v in sorted(per.items(), key=lambda x: -x[1])}
    )
    kernel = {k: (sys_after[k] - sys_before[k]) * 1e6 / n for k in sys_after if k != "MainThread"}
    in_kernel = {k: round(v, 1) for k, v in sorted(kernel.items(), key=lambda x: -x[1])}
    print("  of which in the kernel:", in_kernel)
    waits = {k: (switches_after[k] - switches_before[k]) / n for k in switches_after if k != "MainThread"}
    shown = {k: round(v, 2) for k, v in waits.items() if v}
    print("waits (voluntary context switches) per task by thread:", shown)
    if client is not None:
        print(
            f"server CPU µs/task: {(server_after - server_before) * 1e6 / n:.1f}; "
            "busiest commands (µs, calls per task):"
        )
        for name, s in sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:8]:
            print(f"  {name.removeprefix('cmdstat_'):10} {s['usec'] / n:6.2f} µs {s['calls'] / n:6.3f}")
    print("fetch sizes (messages: fetches):", dict(sorted(sizes.items())))
    print(
        f"states queued {counts['queued']:,}, written {counts['written']:,} "
        f"in {counts['flushes']:,} writer flushes ({n / max(1, counts['flushes']):.1f} tasks per flush)"
    )
    for start in range(0, len(sent) if client is not None else 0, 1000):
        client.delete(*sent[start : start + 1000])


if __name__ == "__main__":
    main()
