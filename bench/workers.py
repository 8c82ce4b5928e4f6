"""Runs K Machinery worker processes as one, for the scaling row (``redis/redis x2``).

    python bench/workers.py K -- python -m machinery worker -A bench.tasks:app -c 8 ...

Starts K copies of the command, each with its own ready file; once every one consumes, writes the
latest of their start times into ``BENCH_READY_FILE`` (so the drain is timed from when all K fetch).
SIGTERM/SIGINT are passed on to every copy; exits when they all have. The benchmark measures CPU and
memory of this process's whole tree, so the row's worker figures are the K workers' sum.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

READY_ENV = "BENCH_READY_FILE"


def main(argv: list[str]) -> int:
    count, command = int(argv[0]), argv[argv.index("--") + 1 :]
    ready_file = os.environ.get(READY_ENV, "")
    tmp = tempfile.mkdtemp(prefix="machinery-bench-workers-")
    files = [os.path.join(tmp, f"ready-{n}") for n in range(count)]
    procs = [subprocess.Popen(command, env={**os.environ, READY_ENV: f}) for f in files]

    def forward(signum: int, _frame: object) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    if ready_file:
        times: dict[str, float] = {}
        while len(times) < count and all(p.poll() is None for p in procs):
            for f in files:
                if f not in times and os.path.exists(f):
                    text = open(f).read().strip()  # noqa: SIM115 - tiny file, read once
                    if text:
                        times[f] = float(text.split()[0])
            time.sleep(0.005)
        if len(times) == count:
            with open(ready_file, "w") as out:
                out.write(f"{max(times.values()):.6f}\n")
    codes = [proc.wait() for proc in procs]
    return max(codes, default=0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
