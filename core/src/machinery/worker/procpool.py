"""``pool="process"``: run task functions in child processes that a hard time limit can kill.

The worker's threads still fetch, store states and send callbacks; each one hands the function
call to an idle child over a pipe and waits. Children are forked from the worker (they inherit the
registered tasks), talk JSON through the codec (never pickle), apply the soft time limit with
``setitimer`` (so :class:`~machinery.errors.TimeLimitExceeded` is raised inside the task) and are
killed and replaced when the hard limit runs out. A child dies with its parent: Linux kills it
when the worker dies (``PR_SET_PDEATHSIG``), and elsewhere it ends when its pipe reaches EOF.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import multiprocessing
import os
import signal
import threading
from multiprocessing.connection import Connection
from types import FrameType
from typing import TYPE_CHECKING, Any

from .. import codec
from ..errors import MessageError, Retry, TimeLimitExceeded
from ..log import logger
from ..signature import Arg, State, TaskState

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from ..app import Machinery
    from ..task import TaskOptions

__all__ = ["ChildFailure", "ProcessPool", "Results"]


class Results(list[Arg]):
    """Typed results already computed in a child (the runner stores them as they are)."""


class ChildFailure(Exception):  # noqa: N818 - carries the task's own error text
    """The task raised in the child; ``str()`` is its error text."""


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise TimeLimitExceeded()


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when the worker dies; quit now if it already did."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the pipe's EOF ends the child between tasks
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _child_main(app: Machinery, conn: Connection, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent worker decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGALRM, _on_alarm)
    from ..task import _current

    while True:
        try:
            request = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        sig = codec.decode_signature(request["signature"])
        soft = request.get("soft_time_limit") or 0
        token = _current.set(sig)
        try:
            if soft:
                signal.setitimer(signal.ITIMER_REAL, soft)
            value = app.get_task(sig.name).fn(*sig.arg_values, **sig.kwargs)
            signal.setitimer(signal.ITIMER_REAL, 0)
            results = codec.results_from_return(value)
            codec.check_results(results, sig.name)
            state = TaskState(sig.uuid, State.SUCCESS, results=results)
            reply: dict[str, Any] = {"state": codec.state_to_dict(state)}
        except MessageError as exc:  # an unencodable result: FAILURE, never retried
            signal.setitimer(signal.ITIMER_REAL, 0)
            reply = {"unencodable": str(exc)}
        except Retry as retry:
            signal.setitimer(signal.ITIMER_REAL, 0)
            reply = {"retry": retry.countdown, "message": retry.message}
        except Exception as exc:
            signal.setitimer(signal.ITIMER_REAL, 0)
            reply = {"error": str(exc) or type(exc).__name__}
        finally:
            _current.reset(token)
        conn.send_bytes(json.dumps(reply).encode())


class _Child:
    def __init__(self, app: Machinery) -> None:
        context = multiprocessing.get_context("fork")
        self.conn, child_conn = context.Pipe()
        self.process: BaseProcess = context.Process(
            target=_child_main, args=(app, child_conn, os.getpid()), name="machinery-child", daemon=True
        )
        self.process.start()
        child_conn.close()

    def kill(self) -> None:
        if self.process.is_alive() and self.process.pid is not None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(5)
        self.conn.close()


class ProcessPool:
    """``size`` forked children; ``call`` runs one task in an idle child."""

    def __init__(self, app: Machinery, size: int) -> None:
        self.app = app
        self._idle = [_Child(app) for _ in range(size)]
        self._lock = threading.Condition()

    def call(self, signature_json: bytes, options: TaskOptions) -> Results:
        """Run the task; returns its typed results or raises ChildFailure / Retry /
        TimeLimitExceeded (hard limit: the child was killed and replaced)."""
        child = self._checkout()
        request = {"signature": signature_json.decode(), "soft_time_limit": options.soft_time_limit}
        try:
            child.conn.send_bytes(json.dumps(request).encode())
            if not child.conn.poll(options.time_limit):
                logger.error("task exceeded its hard time limit; killing child %s", child.process.pid)
                child.kill()
                child = _Child(self.app)
                raise TimeLimitExceeded()
            reply = json.loads(child.conn.recv_bytes())
        except (EOFError, OSError) as exc:
            child.kill()
            child = _Child(self.app)
            raise ChildFailure(f"worker child process died: {exc}") from None
        finally:
            self._checkin(child)
        if "error" in reply:
            raise ChildFailure(reply["error"])
        if "unencodable" in reply:
            raise MessageError(reply["unencodable"])
        if "retry" in reply:
            raise Retry(countdown=reply["retry"], message=reply.get("message", ""))
        return Results(codec.state_from_dict(reply["state"]).results or [])

    def _checkout(self) -> _Child:
        with self._lock:
            while not self._idle:
                self._lock.wait()
            return self._idle.pop()

    def _checkin(self, child: _Child) -> None:
        with self._lock:
            self._idle.append(child)
            self._lock.notify()

    def close(self) -> None:
        with self._lock:
            children, self._idle = self._idle, []
        for child in children:
            child.kill()
