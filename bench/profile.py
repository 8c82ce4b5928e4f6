"""Where a Machinery worker's CPU goes: W1's drain under a CPU-clock profiler (yappi, every thread).

    .venv/bin/python bench/profile.py [--combo redis/redis] [--n 10000] [--top 40] [--out FILE]

Enqueues 2 N ``add`` tasks, then runs ONE worker (the real CLI, concurrency 8) inside this script's
child process with yappi's CPU clock on every thread, until the queue is drained; prints the worker's
CPU per task without the profiler (a first, unprofiled drain of the same size), the profiled CPU per
task, the top functions by own CPU time and by inclusive time, and the share of each area (codec,
worker, state writer, runner, Redis plugin, redis-py, locks and queues). Needs ``pip install yappi``.
REDIS_URL / AMQP_URL as for run.py.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench import harness  # noqa: E402

AREAS = (
    ("codec", ("machinery/codec.py", "machinery/signature.py", "orjson", "json/")),
    ("worker loop", ("machinery/worker/worker.py",)),
    ("state writer", ("machinery/worker/statewriter.py",)),
    (
        "runner",
        (
            "machinery/worker/runner.py",
            "machinery/task.py",
            "machinery/tracing.py",
            "machinery/worker/timelimit",
        ),
    ),
    ("redis plugin", ("machinery_redis/",)),
    ("redis-py", ("redis/", "hiredis")),
    ("socket I/O", ("socket.", "_socket", "select.", "poll")),
    ("locks, queues, threads", ("threading.py", "queue.py", "_thread", "_queue", "concurrent/")),
    ("enum, dataclasses, datetime", ("enum.py", "dataclasses.py", "datetime", "uuid.py")),
    ("logging", ("logging/",)),
)


def _area(module: str, name: str) -> str:
    where = f"{module} {name}"
    for area, marks in AREAS:
        if any(mark in where for mark in marks):
            return area
    return "other"


def child(out_path: str, argv: list[str]) -> None:
    """In the worker process: profile every thread's CPU, run the CLI worker, dump the stats."""
    import yappi  # type: ignore[import-untyped]

    yappi.set_clock_type("cpu")
    yappi.start(builtins=True, profile_threads=True)
    from machinery import cli

    try:
        cli.main(argv)
    except SystemExit:
        pass
    finally:
        yappi.stop()
        rows = []
        for stat in yappi.get_func_stats():
            rows.append((stat.module, stat.name, stat.lineno, stat.ncall, stat.tsub, stat.ttot))
        with open(out_path, "w") as f:
            for row in rows:
                f.write("\t".join(str(v) for v in row) + "\n")


def _drain(system: Any, n: int, argv_prefix: list[str], log: str) -> tuple[float, float, int]:
    system.setup()
    ids = [system.enqueue_one(i) for i in range(n)]
    ids += system.enqueue_batch(n, n)
    ready = tempfile.mktemp(prefix="machinery-profile-ready-")
    argv, env = system.worker_command(ready)
    worker = harness.WorkerProcess(argv_prefix + argv[3:] if argv_prefix else argv, env, ready, log)
    try:
        t0 = worker.wait_ready(60)
        c0 = harness.cpu_seconds(harness.children(worker.pid))
        t_end, count, _ = harness._wait_drained(system, ids, harness.Options(drain_limit=600), t0, print)
        c1 = harness.cpu_seconds(harness.children(worker.pid))
    finally:
        worker.stop(60)
        system.cleanup()
        if os.path.exists(ready):
            os.unlink(ready)
    return count / (t_end - t0), (c1 - c0) / max(1, count) * 1e6, count


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--combo", default="redis/redis", help="redis/redis (default), sqlite/sqlite, amqp/redis")
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--amqp-url", default=os.environ.get("AMQP_URL", ""))
    p.add_argument("--out", default="", help="also write the report to this file")
    args = p.parse_args()
    from bench.run import _with_db
    from bench.systems import MachinerySystem

    redis_url = _with_db(args.redis_url, 9)
    urls = {"redis": redis_url, "sqlite": "sqlite", "amqp": args.amqp_url}
    broker, backend = (urls[part] for part in args.combo.split("/"))
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    rate, cpu, count = _drain(MachinerySystem(args.combo, broker, backend), args.n, [], "")
    say(f"{args.combo}: unprofiled drain of {count:,}: {rate:,.0f} tasks/s, worker CPU {cpu:.0f} µs/task")
    stats_path = tempfile.mktemp(prefix="machinery-profile-", suffix=".tsv")
    prefix = [sys.executable, os.path.abspath(__file__), "--child", stats_path]
    rate_p, cpu_p, count = _drain(MachinerySystem(args.combo, broker, backend), args.n, prefix, "")
    say(f"{args.combo}: profiled drain: {rate_p:,.0f} tasks/s, CPU {cpu_p:.0f} µs/task (yappi inflates it)")
    time.sleep(0.5)
    rows = []
    with open(stats_path) as f:
        for line in f:
            f_mod, f_name, f_line, f_calls, f_sub, f_tot = line.rstrip("\n").split("\t")
            rows.append((f_mod, f_name, int(f_line), int(f_calls), float(f_sub), float(f_tot)))
    os.unlink(stats_path)
    total = sum(r[4] for r in rows)
    say(f"profiled CPU: {total:.2f} s = {total / count * 1e6:.0f} µs/task over {count:,} tasks (all threads)")
    say()
    say("own CPU by area (µs/task, share):")
    areas: dict[str, float] = collections.defaultdict(float)
    for module, name, _, _, tsub, _ in rows:
        areas[_area(module, name)] += tsub
    for area, t in sorted(areas.items(), key=lambda kv: -kv[1]):
        say(f"  {t / count * 1e6:7.1f}  {t / total * 100:5.1f} %  {area}")

    def short(module: str) -> str:
        for mark in ("site-packages/", "/src/", "/lib/python3.11/"):
            if mark in module:
                return module.split(mark, 1)[1]
        return module

    say()
    say(f"top {args.top} functions by own CPU (µs/task, calls/task):")
    for module, name, lineno, ncall, tsub, _ in sorted(rows, key=lambda r: -r[4])[: args.top]:
        say(f"  {tsub / count * 1e6:7.1f}  {ncall / count:6.2f}  {name}  ({short(module)}:{lineno})")
    say()
    say(f"top {args.top} by inclusive CPU (µs/task):")
    for module, name, lineno, ncall, _, ttot in sorted(rows, key=lambda r: -r[5])[: args.top]:
        say(f"  {ttot / count * 1e6:7.1f}  {ncall / count:6.2f}  {name}  ({short(module)}:{lineno})")
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
