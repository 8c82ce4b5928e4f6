"""Small helpers of the contract kit: deadlines, polling with a timeout, run logs, child processes."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

__all__ = [
    "Child",
    "RunLog",
    "eventually",
    "unique",
]

T = TypeVar("T")


def unique(prefix: str = "contract") -> str:
    """A name no other test uses: ``contract_1a2b3c4d5e6f``."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def eventually(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.01,
) -> T:
    """Call ``probe`` until it returns something other than None/False, at most ``timeout`` seconds.

    The polling interval grows from ``interval`` to 0.1 s. Raises ``AssertionError`` naming ``what``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(min(interval, remaining))
        interval = min(interval * 1.5, 0.1)


class RunLog:
    """Append-only event log in a directory, shared by every process of a test.

    Each ``append`` writes one short line with ``O_APPEND`` (atomic for small writes), so tasks in
    several worker processes can count their runs without a shared server.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def _file(self, key: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
        return self.dir / f"{safe}.log"

    def append(self, key: str, event: str) -> None:
        line = f"{event} {os.getpid()} {time.time():.6f}\n".encode()
        fd = os.open(self._file(key), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def events(self, key: str) -> list[tuple[str, int, float]]:
        """``(event, pid, unix time)`` in the order they were written."""
        try:
            text = self._file(key).read_text()
        except FileNotFoundError:
            return []
        out: list[tuple[str, int, float]] = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3:
                out.append((parts[0], int(parts[1]), float(parts[2])))
        return out

    def count(self, key: str, event: str) -> int:
        return sum(1 for e in self.events(key) if e[0] == event)


class Child:
    """A helper process of the kit (``python -m machinery.testing.<module>``).

    The spec (any picklable value, usually a dict holding a :class:`~machinery.Config`) is written to
    a file the child reads. The child talks line by line on stdout; stderr goes to ``log_path``.
    """

    def __init__(self, module: str, spec: Any, workdir: Path, name: str) -> None:
        self.name = name
        workdir.mkdir(parents=True, exist_ok=True)
        self.spec_path = workdir / f"{name}.spec"
        self.log_path = workdir / f"{name}.log"
        with open(self.spec_path, "wb") as f:
            pickle.dump(spec, f)
        self._log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - closed in close()
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, str(self.spec_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._lines.put(raw.decode(errors="replace").rstrip("\n"))
        self._lines.put(None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, prefix: str, timeout: float) -> str:
        """The next stdout line starting with ``prefix`` (other lines are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.name}: no {prefix!r} line after {timeout:.1f}s; log:\n{self.log_tail()}"
                )
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                code = self.proc.wait(5)
                raise AssertionError(
                    f"{self.name} exited with {code} before saying {prefix!r}; log:\n{self.log_tail()}"
                )
            if line.startswith(prefix):
                return line[len(prefix) :].strip()

    def expect_json(self, prefix: str, timeout: float) -> Any:
        return json.loads(self.expect(prefix, timeout))

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def log_tail(self, lines: int = 40) -> str:
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL, no clean-up in the child."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(10)

    def terminate(self) -> None:
        """Send SIGTERM (a worker stops gracefully); :meth:`close` waits for it."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()

    def close(self, timeout: float = 10.0) -> int | None:
        """Ask the child to stop (SIGTERM), SIGKILL it after ``timeout``; its exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._log.close()
        return self.proc.returncode


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"
