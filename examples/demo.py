"""``make demo``: Go Machinery's example sequence, with a real worker in another process.

1. Starts ``python -m machinery worker -A examples.tasks:app --concurrency 4`` as a separate
   process, on a fresh ``sqlite://`` file (no server needed), and waits until it answers a probe.
2. From this process sends the seed examples (single tasks, a group, a chord, a chain, an error,
   a panic, an ETA, a retried task), prints each one's state and value, and **checks** it.
3. Stops the worker with SIGTERM and checks that it exits cleanly (code 0).

Exit code 0 when every check passed, 1 otherwise. Run it from anywhere:
``python examples/demo.py`` (needs only ``pip install -e core``).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 20.0
RESULT_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0


def _marks() -> tuple[str, str]:
    try:
        "✓✗".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "ok", "FAIL"
    return "✓", "✗"


OK, BAD = _marks()


class Report:
    """Prints one aligned line per check and counts the failures."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def line(self, label: str, state: str, shown: str, ok: bool, note: str = "") -> None:
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        text = f"{label:<46} {state:<8} {shown:<22} {OK if ok else BAD}"
        print(f"{text}  {note}" if note else text, flush=True)

    def check(
        self,
        label: str,
        get: Callable[[], Any],
        expected: Any = None,
        *,
        state: str = "SUCCESS",
        matches: Callable[[Any], bool] | None = None,
        show: Callable[[Any], str] = repr,
        note: Callable[[Any], str] | None = None,
    ) -> None:
        """Run ``get()`` (a result's ``get``); SUCCESS gives its value, FAILURE the error text.
        The check passes when the state is ``state`` and the value equals ``expected`` (or
        ``matches(value)`` is true)."""
        from machinery import ResultTimeoutError, TaskError

        try:
            value, got = get(), "SUCCESS"
        except TaskError as exc:
            value, got = str(exc), "FAILURE"
        except ResultTimeoutError as exc:
            self.line(label, "TIMEOUT", "-", False, str(exc))
            return
        ok = got == state and (matches(value) if matches is not None else value == expected)
        shown = show(value)
        extra = note(value) if note is not None and ok else ""
        if not ok:
            want = f"{state} {expected!r}" if matches is None else state
            extra = f"expected {want}"
        self.line(label, got, shown, ok, extra)


def start_worker(url: str, log_path: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, MACHINERY_BROKER=url, MACHINERY_BACKEND=url)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    command = [
        sys.executable,
        "-m",
        "machinery",
        "worker",
        "-A",
        "examples.tasks:app",
        "--concurrency",
        "4",
        "--consumer-tag",
        "demo-worker",
    ]
    with open(log_path, "wb") as log:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_until_ready(worker: subprocess.Popen[bytes]) -> float:
    """Send a probe task and wait for its result; fail early if the worker process died."""
    from examples.tasks import add
    from machinery import ResultTimeoutError

    started = time.monotonic()
    probe = add.delay(20, 22)
    while time.monotonic() - started < READY_TIMEOUT:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with code {worker.returncode} before it was ready")
        try:
            if probe.get(timeout=0.25) == 42:
                return time.monotonic() - started
            raise RuntimeError("the probe task returned a wrong value")
        except ResultTimeoutError:
            continue
    raise RuntimeError(f"the worker did not answer a probe task within {READY_TIMEOUT:.0f}s")


def run_examples(report: Report) -> None:
    from examples.tasks import (
        add,
        app,
        concat,
        delay_test,
        flaky,
        long_running_task,
        multiply,
        panic_task,
        return_just_error,
        return_multiple_values,
        split,
        sum_floats,
        sum_ints,
    )
    from machinery import Chain, Chord, Group

    t = RESULT_TIMEOUT

    report.check("add(1, 1)", lambda: add.delay(1, 1).get(t), 2, show=str)
    report.check("multiply(4, 5)", lambda: multiply.delay(4, 5).get(t), 20, show=str)
    report.check("sum_ints([1, 2])", lambda: sum_ints.delay([1, 2]).get(t), 3, show=str)
    report.check(
        "sum_floats([1.5, 2.7])",
        lambda: sum_floats.delay([1.5, 2.7]).get(t),
        4.2,
        matches=lambda v: isinstance(v, float) and math.isclose(v, 4.2, abs_tol=1e-9),
        show=str,
    )
    report.check('concat(["foo", "bar"])', lambda: concat.delay(["foo", "bar"]).get(t), "foobar")
    report.check('split("foo")', lambda: split.delay("foo").get(t), ["f", "o", "o"])
    report.check(
        'return_multiple_values("foo", "bar")',
        lambda: return_multiple_values.delay("foo", "bar").get(t),
        ("foo", "bar"),
    )

    def group() -> Group:
        return Group([add.s(1, 1), add.s(2, 2), add.s(5, 6)])

    report.check(
        "group add(1,1), add(2,2), add(5,6)", lambda: app.send_group(group(), 10).get(t), [2, 4, 11], show=str
    )
    report.check(
        "chord (group) -> multiply()",
        lambda: app.send_chord(Chord(group(), multiply.s()), 10).get(t),
        88,
        show=str,
    )
    report.check(
        "chain add(1,1) add(2,2) add(5,6) multiply(4)",
        lambda: app.send_chain(Chain([add.s(1, 1), add.s(2, 2), add.s(5, 6), multiply.s(4)])).get(t),
        68,
        show=str,
    )
    report.check(
        'return_just_error("Test error", True)',
        lambda: return_just_error.delay("Test error", True).get(t),
        "Test error",
        state="FAILURE",
    )
    report.check("panic_task()", lambda: panic_task.delay().get(t), "oops", state="FAILURE")

    eta = datetime.now(UTC) + timedelta(milliseconds=500)
    eta_ns = int(eta.timestamp()) * 1_000_000_000 + eta.microsecond * 1000
    report.check(
        "delay_test() with ETA now+500ms",
        lambda: app.send_task(delay_test.s().set(eta=eta)).get(t),
        matches=lambda v: isinstance(v, int) and v >= eta_ns,
        show=lambda v: f"{(v - eta_ns) / 1e6:+.1f} ms" if isinstance(v, int) else repr(v),
        note=lambda v: "ran at or after its ETA",
    )
    report.check(
        "flaky(failures=2) retry_count=3",
        lambda: app.send_task(flaky.s(2, 3).set(retry_count=3)).get(t),
        3,
        show=str,
        note=lambda v: f"SUCCESS after {v} runs (retried after 1 s, 2 s)",
    )
    report.check(
        "long_running_task(1)",
        lambda: long_running_task.delay(1).get(t),
        None,
        note=lambda v: "returns nothing",
    )


def stop_worker(worker: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM, then wait; None when it did not exit in time (it is then killed)."""
    if worker.poll() is not None:
        return worker.returncode
    worker.send_signal(signal.SIGTERM)
    try:
        return worker.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
        return None


def main() -> int:
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="machinery-demo-"))
    url = "sqlite:///" + str(workdir / "demo.db")
    log_path = workdir / "worker.log"
    # The producer side (this process) reads the same URLs as the worker when it imports the tasks.
    os.environ["MACHINERY_BROKER"] = url
    os.environ["MACHINERY_BACKEND"] = url
    sys.path.insert(0, str(ROOT))

    print(f"Machinery demo: a worker process and this producer on {url}", flush=True)
    worker = start_worker(url, log_path)
    report = Report()
    problem = ""
    try:
        ready = wait_until_ready(worker)
        print(f"worker pid {worker.pid} ready in {ready:.2f}s (python -m machinery worker --concurrency 4)\n")
        print(f"{'task':<46} {'state':<8} value", flush=True)
        run_examples(report)
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"
    finally:
        code = stop_worker(worker)
    if code != 0:
        stopped = "did not stop within 15 s" if code is None else f"exited with code {code}"
        problem = problem or f"the worker {stopped} after SIGTERM"
    elapsed = time.monotonic() - began
    print()
    if problem or report.failed:
        print(f"{BAD} {report.passed} passed, {report.failed} failed. {problem}".rstrip())
        print(f"worker log: {log_path}")
        print("".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-20:]), end="")
        return 1
    print(
        f"{OK} all {report.passed} checks passed; worker stopped by SIGTERM (exit 0); {elapsed:.1f}s in all"
    )
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
