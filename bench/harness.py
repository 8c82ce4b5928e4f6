"""The workloads W1-W3, the same for every system (Machinery, the minimal redis-py loop, peers).

Standard library only: the peers' runner imports this module from their own virtualenv.

A system is measured through :class:`System` (enqueue one / a batch, a worker command, a
completion check, one round trip). :func:`run_workload` does, in one go:

- W1 enqueue: ``n`` tasks one by one, then ``n`` more in batches (when the system has a batch API;
  else one by one, untimed), with no worker running;
- W1 drain: start ONE worker process, wait until it says it is consuming (start-up excluded), and
  time until every one of the ``2 n`` results is stored; peak RSS of the worker's process tree and
  its CPU time per task (``/proc/<pid>/stat`` utime + stime);
- W2 latency: worker idle, ``rounds`` x (send one task, wait for its result); then three times
  (1 s idle, one round trip);
- W3 idle: the worker's CPU over ``idle_seconds`` while nothing is sent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------------------------- output
class Progress:
    """Progress lines on stderr: elapsed time, what is measured, and an ETA from a plan of step weights."""

    def __init__(self, planned: float = 0.0) -> None:
        self.t0 = time.monotonic()
        self.planned = planned  # estimated seconds of the whole run
        self.done_planned = 0.0  # estimated seconds of the steps finished so far
        self.calib_est = self.calib_real = 0.0
        self.step_t0 = self.t0

    def step_done(self, estimate: float, measured: bool = True) -> None:
        """A planned step ended; ``measured`` steps also calibrate the estimates of the rest."""
        self.done_planned += estimate
        if measured:
            now = time.monotonic()
            self.calib_est += estimate
            self.calib_real += now - self.step_t0
        self.step_t0 = time.monotonic()

    def eta(self) -> str:
        if self.planned <= 0:
            return ""
        left = max(0.0, self.planned - self.done_planned)
        scale = self.calib_real / self.calib_est if self.calib_est > 30 else 1.0
        return f", ETA {_mmss(left * min(max(scale, 0.5), 3.0))}"

    def __call__(self, text: str) -> None:
        elapsed = time.monotonic() - self.t0
        print(f"[{_mmss(elapsed)}{self.eta()}] {text}", file=sys.stderr, flush=True)


def _mmss(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60:d}:{seconds % 60:02d}"


def quiet(_text: str) -> None:
    return None


# ---------------------------------------------------------------------------------------------- /proc
def children(pid: int) -> list[int]:
    """``pid`` and all its descendants (live)."""
    out = [pid]
    i = 0
    while i < len(out):
        task_dir = f"/proc/{out[i]}/task"
        try:
            tids = os.listdir(task_dir)
        except OSError:
            tids = []
        for tid in tids:
            try:
                with open(f"{task_dir}/{tid}/children") as f:
                    out.extend(int(c) for c in f.read().split())
            except OSError:
                continue
        i += 1
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of ``pids`` (all their threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return total / CLK_TCK


def thread_cpu_ns(pids: Sequence[int]) -> int:
    """CPU time of the live threads of ``pids`` in ns (``/proc/<pid>/task/<tid>/schedstat``): finer than
    the 10 ms ticks of ``stat``, for the idle measurement (threads that exit are not counted)."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total


def rss_bytes(pids: Sequence[int]) -> tuple[int, int]:
    """(current RSS, sum of peak RSS ``VmHWM``) of ``pids``."""
    now = peak = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        now += int(line.split()[1]) * 1024
                    elif line.startswith("VmHWM:"):
                        peak += int(line.split()[1]) * 1024
        except OSError:
            continue
    return now, peak


class RssSampler:
    """Samples the RSS of a process tree every ``interval`` seconds; ``peak`` is the largest sum seen
    (or the sum of the processes' own peaks, whichever is larger)."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        now, hwm = rss_bytes(children(self.pid))
        self.peak = max(self.peak, now, hwm)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.sample()
        return self.peak


def listening_pids(port: int) -> list[int]:
    """The processes holding a TCP socket listening on ``port`` (any address), from /proc (needs the
    right to read their file descriptors: the same user, or root); [] when none is found."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                        inodes.add(fields[9])
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    if not inodes:
        return []
    wanted = {f"socket:[{inode}]" for inode in inodes}
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") in wanted:
                    pids.append(int(entry))
                    break
            except OSError:
                continue
    return pids


# ---------------------------------------------------------------------------------------------- stats
def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation between closest ranks."""
    data = sorted(samples)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    """median, min and max of repeated measurements."""
    clean = [v for v in values if v == v]  # drop NaN
    if not clean:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"median": statistics.median(clean), "min": min(clean), "max": max(clean), "n": len(clean)}


# ---------------------------------------------------------------------------------------------- systems
class System(Protocol):
    """What the workloads need from a task queue."""

    name: str

    def setup(self) -> None:
        """Connect, create what the run needs (queues are empty)."""

    def enqueue_one(self, i: int) -> str:
        """Send ``add(i, i)``; return an id :meth:`done` understands."""

    def enqueue_batch(self, start: int, count: int) -> list[str] | None:
        """Send ``add(i, i)`` for ``i`` in ``range(start, start + count)`` in one batch; None when the
        system has no batch API."""

    def worker_command(self, ready_file: str) -> tuple[list[str], dict[str, str]]:
        """The command (and extra environment) of ONE worker process of concurrency 8. It must write
        the wall-clock time (``time.time()``) to ``ready_file`` when it starts consuming."""

    def done(self, ids: Sequence[str]) -> list[bool]:
        """For each id: is its result stored (SUCCESS or FAILURE)?"""

    def roundtrip(self, i: int) -> None:
        """Send one ``add`` and wait for its result (raise when it does not come in 10 s)."""

    def cleanup(self) -> None:
        """Delete what the run created. Must not raise."""


@dataclass
class Options:
    n: int = 10_000
    batch: int = 1000
    rounds: int = 300
    idle_seconds: float = 3.0
    drain_limit: float = 300.0  # seconds the drain may take before the run is cut
    #: seconds between two completion probes during the drain
    poll: float = 0.005
    log_dir: str = ""
    #: processes of the servers the system uses (their CPU during the drain is reported per task)
    server_pids: list[int] = field(default_factory=list)


@dataclass
class Outcome:
    system: str
    n: int
    enqueue_one_per_s: float = float("nan")
    enqueue_batch_per_s: float = float("nan")
    processed: int = 0
    processed_per_s: float = float("nan")
    drain_seconds: float = float("nan")
    timed_out: bool = False
    worker_cpu_us_per_task: float = float("nan")
    server_cpu_us_per_task: float = float("nan")
    worker_peak_rss_mb: float = float("nan")
    idle_cpu_percent: float = float("nan")
    p50_ms: float = float("nan")
    p90_ms: float = float("nan")
    p99_ms: float = float("nan")
    after_idle_ms: float = float("nan")
    after_idle_samples_ms: list[float] = field(default_factory=list)
    error: str = ""
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class WorkerProcess:
    """One worker process; stopped with SIGTERM (then SIGKILL) on :meth:`stop`."""

    def __init__(self, argv: list[str], env: dict[str, str], ready_file: str, log_path: str) -> None:
        self.ready_file = ready_file
        self.log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float) -> float:
        """The wall-clock time the worker started consuming (it writes it into the ready file)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited with code {self.proc.returncode} before consuming")
            try:
                with open(self.ready_file) as f:
                    text = f.read().strip()
                if text:
                    return float(text.split()[0])
            except (OSError, ValueError):
                pass
            time.sleep(0.001)
        raise RuntimeError(f"the worker did not start consuming within {timeout:.0f} s")

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.log is not subprocess.DEVNULL:
            self.log.close()  # type: ignore[union-attr]


def _wait_drained(
    system: System, ids: list[str], opts: Options, t_start: float, progress: Callable[[str], None]
) -> tuple[float, int, bool]:
    """Poll until every id is done; (wall-clock time the last one was seen done, count done, timed out).

    Completion is nearly FIFO, so each probe checks a window of ids from the first not yet seen done
    and moves past the done prefix; the window is about twice what the last probe moved past, so the
    probes cost about one check per task, batched, and little CPU on this shared machine.
    """
    first = 0
    window = 32
    last_seen = time.time()
    deadline = t_start + opts.drain_limit
    next_report = time.monotonic() + 5.0
    n = len(ids)
    while first < n:
        flags = system.done(ids[first : first + window])
        now = time.time()
        advanced = 0
        for flag in flags:
            if not flag:
                break
            advanced += 1
        if advanced:
            first += advanced
            last_seen = now
        if advanced == len(flags) and first < n:
            window = min(window * 2, 1024)
            continue  # the whole window was done: look further at once
        window = max(32, 2 * advanced)
        if now > deadline:
            return last_seen, first, True
        if time.monotonic() >= next_report:
            rate = first / max(1e-9, now - t_start)
            left = (n - first) / rate if rate > 0 else float("inf")
            progress(f"  {system.name}: drained {first:,}/{n:,} ({rate:,.0f}/s, ~{left:.0f} s left)")
            next_report = time.monotonic() + 5.0
        time.sleep(opts.poll)
    return last_seen, n, False


def run_workload(system: System, opts: Options, progress: Callable[[str], None] = quiet) -> Outcome:
    """W1, W2 and W3 for one system; never raises (errors land in ``Outcome.error``)."""
    out = Outcome(system.name, opts.n)
    worker: WorkerProcess | None = None
    ready_dir = tempfile.mkdtemp(prefix="machinery-bench-")
    ready_file = os.path.join(ready_dir, "ready")
    try:
        system.setup()
        # W1 enqueue ------------------------------------------------------------------------------
        progress(f"{system.name}: W1 enqueue {opts.n:,} one by one")
        ids: list[str] = []
        t0 = time.perf_counter()
        for i in range(opts.n):
            ids.append(system.enqueue_one(i))
        out.enqueue_one_per_s = opts.n / (time.perf_counter() - t0)
        settle: Callable[[], bool] | None = getattr(system, "settle", None)
        if settle is not None and settle():  # a send that returns before the broker's confirm
            confirmed = opts.n / (time.perf_counter() - t0)
            out.notes.append(
                f"one by one: {confirmed:,.0f}/s until the broker confirmed every message (a send returns "
                "before its confirm: the amqp outbox)"
            )
        progress(f"{system.name}: W1 enqueue {opts.n:,} in batches of {opts.batch}")
        t0 = time.perf_counter()
        batched: list[str] | None = []
        for start in range(opts.n, 2 * opts.n, opts.batch):
            got = system.enqueue_batch(start, min(opts.batch, 2 * opts.n - start))
            if got is None:
                batched = None
                break
            batched.extend(got)  # type: ignore[union-attr]
        if batched is not None:
            out.enqueue_batch_per_s = opts.n / (time.perf_counter() - t0)
            ids.extend(batched)
        else:
            out.notes.append("no batch API: the second half was sent one by one (untimed)")
            for i in range(opts.n, 2 * opts.n):
                ids.append(system.enqueue_one(i))
        # W1 drain --------------------------------------------------------------------------------
        argv, env = system.worker_command(ready_file)
        log_path = os.path.join(opts.log_dir, f"{_slug(system.name)}-worker.log") if opts.log_dir else ""
        progress(f"{system.name}: W1 drain of {len(ids):,} tasks by one worker process (concurrency 8)")
        worker = WorkerProcess(argv, env, ready_file, log_path)
        sampler = RssSampler(worker.pid)
        t_ready = worker.wait_ready(60.0)
        cpu0 = cpu_seconds(children(worker.pid))
        server0 = cpu_seconds(opts.server_pids)
        t_end, count, timed_out = _wait_drained(system, ids, opts, t_ready, progress)
        cpu1 = cpu_seconds(children(worker.pid))
        if opts.server_pids:
            out.server_cpu_us_per_task = (cpu_seconds(opts.server_pids) - server0) / max(1, count) * 1e6
        out.worker_peak_rss_mb = sampler.stop() / 2**20
        out.processed = count
        out.timed_out = timed_out
        out.drain_seconds = t_end - t_ready
        out.processed_per_s = count / out.drain_seconds if out.drain_seconds > 0 else float("nan")
        out.worker_cpu_us_per_task = (cpu1 - cpu0) / max(1, count) * 1e6
        if timed_out:
            out.notes.append(f"drain cut after {opts.drain_limit:.0f} s: {count:,}/{len(ids):,} done")
            return out
        # W2 latency ------------------------------------------------------------------------------
        progress(f"{system.name}: W2 latency, {opts.rounds} round trips on an idle worker")
        for i in range(5):  # warm-up
            system.roundtrip(i)
        samples = []
        for i in range(opts.rounds):
            t0 = time.perf_counter()
            system.roundtrip(i)
            samples.append((time.perf_counter() - t0) * 1000)
        out.p50_ms = percentile(samples, 0.5)
        out.p90_ms = percentile(samples, 0.9)
        out.p99_ms = percentile(samples, 0.99)
        for i in range(3):
            time.sleep(1.0)
            t0 = time.perf_counter()
            system.roundtrip(i)
            out.after_idle_samples_ms.append((time.perf_counter() - t0) * 1000)
        out.after_idle_ms = statistics.median(out.after_idle_samples_ms)
        # W3 idle ---------------------------------------------------------------------------------
        progress(f"{system.name}: W3 idle CPU over {opts.idle_seconds:.0f} s")
        time.sleep(0.5)
        pids = children(worker.pid)
        c0, w0 = thread_cpu_ns(pids), time.monotonic()
        time.sleep(opts.idle_seconds)
        c1, w1 = thread_cpu_ns(pids), time.monotonic()
        out.idle_cpu_percent = (c1 - c0) / 1e9 / (w1 - w0) * 100
    except Exception as exc:
        out.error = f"{type(exc).__name__}: {exc}"
        progress(f"{system.name}: FAILED: {out.error}")
    finally:
        if worker is not None:
            worker.stop()
        with contextlib.suppress(Exception):
            system.cleanup()
        with contextlib.suppress(OSError):
            os.unlink(ready_file)
            os.rmdir(ready_dir)
    return out


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")
