"""``make chaos``: send tasks, chords and retrying tasks for N minutes while worker processes are
SIGKILLed at random and the broker server restarts; then count what got lost.

    make chaos CHAOS_ARGS="--broker redis --minutes 2"
    python bench/chaos.py --broker sqlite|redis|amqp|gcppubsub|sqs [--results memcache|redis] [--minutes 5]
        [--workers 3] [--restarts N] [--lock redis]

Workers are separate processes (``python bench/chaos.py worker ...``), each with a thread pool. A
killer thread SIGKILLs a random one every few seconds and starts a replacement; a restarter restarts
the broker server (``scripts/services restart redis|rabbitmq``; for sqlite, which has no server, the
database file is locked exclusively for a few seconds instead). Every task body appends a line to a
run log (one file per task key), so runs are counted whoever ran them.

At the end (after the workers drained the queue) it prints: sent, completed, failed (with reasons),
**lost** (no final state: must be 0), wrong values, duplicate body runs (at-least-once delivery
allows them after a kill or a lease that ran out), chord callbacks fired (published) other than
once, and callback bodies run again (a redelivery, like any task's). Exit status 1 when anything was
lost, a value was wrong, or a chord callback did not fire exactly once. A callback that ran although no
publish was recorded (its publisher was SIGKILLed between the publish and the record) is counted apart,
as ``chord_fires_unrecorded``.
"""

from __future__ import annotations

import argparse
import collections
import inspect
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
QUEUE = "chaos"


# -- the tasks (workers register them) ---------------------------------------------------------------


class RunLog:
    """One append-only file per key in a directory: counts runs across processes."""

    def __init__(self, directory: str) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def append(self, key: str, note: str = "r") -> int:
        """Append one line (``note``, default ``r``) to ``key``'s file; the number of lines now."""
        fd = os.open(self.dir / key, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, note.encode() + b"\n")
        finally:
            os.close(fd)
        return self.count(key)

    def count(self, key: str) -> int:
        try:
            return (self.dir / key).read_bytes().count(b"\n")
        except FileNotFoundError:
            return 0


def register_tasks(app: Any, runs: RunLog) -> None:
    def pause() -> None:
        time.sleep(random.uniform(0.0, 0.08))  # widen the window a kill lands in mid-task

    def chaos_add(key: str, a: int, b: int) -> int:
        runs.append(key)
        pause()
        return a + b

    def chaos_flaky(key: str, failures: int) -> int:
        run = runs.append(key)
        pause()
        if run <= failures:
            raise RuntimeError(f"planned failure {run}")
        return failures + 1  # not the run number: a duplicate run after a kill must not change it

    def chaos_callback(key: str, *values: int) -> int:
        runs.append(key)
        pause()
        return sum(values)

    app.register_tasks({"chaos_add": chaos_add, "chaos_flaky": chaos_flaky, "chaos_callback": chaos_callback})


# -- transports --------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    broker: str
    backend: str
    service: str  # scripts/services name to restart, "" for sqlite (file lock outage instead)
    lock: str = ""  # Config.lock ("": the backend's or broker's lock, else an in-process one)


#: ``Target.service`` of a broker whose server is never restarted in a run (kills only)
NO_RESTART = "-"


def target_for(name: str, workdir: Path) -> Target:
    if name == "sqlite":
        url = f"sqlite:///{workdir / 'chaos.db'}?lease=2&renew=0.5"
        return Target(name, url, url, "")
    if name == "redis":
        url = _env("REDIS_URL")
        return Target(name, f"{url}{'&' if '?' in url else '?'}lease=2&heartbeat=0.5", url, "redis")
    if name == "amqp":
        # results on sqlite: the run measures the broker, and RabbitMQ's restart leaves them alone
        return Target(name, _env("AMQP_URL"), f"sqlite:///{workdir / 'results.db'}", "rabbitmq")
    if name == "gcppubsub":
        # Pub/Sub is a managed service that is never restarted, and the emulator keeps messages in
        # memory only: kills only (--restarts is ignored). A fresh subscription per run.
        project = os.environ.get("PUBSUB_PROJECT_ID", "machinery-test")
        _env("PUBSUB_EMULATOR_HOST")
        url = f"gcppubsub://{project}/chaos-{os.getpid()}?ack_deadline=10"
        return Target(name, url, f"sqlite:///{workdir / 'results.db'}", NO_RESTART)
    if name == "sqs":
        # moto keeps queues and tables in memory: a restart would lose every one of them (and every other
        # user's), which no AWS outage does, so sqs runs with kills only (--restarts is ignored). A short
        # visibility timeout brings a killed worker's messages back in 5 s; results in DynamoDB tables of
        # this run (or --results redis).
        _env("AWS_ENDPOINT_URL_DYNAMODB")
        run = os.getpid()
        broker = f"{_env('SQS_BROKER_URL')}?visibility_timeout=5"
        results = f"dynamodb://?task_states_table=chaos_states_{run}&group_metas_table=chaos_groups_{run}"
        return Target(name, broker, results, NO_RESTART)
    if name == "redis+mongodb":
        # the Redis broker with MongoDB results; the restart is the MongoDB server's
        url = _env("REDIS_URL")
        results = _env("MONGODB_URL").rstrip("/") + "/machinery_chaos"
        return Target(name, f"{url}{'&' if '?' in url else '?'}lease=2&heartbeat=0.5", results, "mongodb")
    raise SystemExit(f"unknown broker {name!r}: use sqlite, redis, amqp, gcppubsub, sqs or redis+mongodb")


def with_results(target: Target, results: str) -> Target:
    """``target`` with its result backend replaced: "" keeps the broker's default; ``memcache`` uses the
    servers of ``MEMCACHE_URL`` (not restarted: memcached keeps nothing across a restart); ``redis`` the
    server of ``REDIS_URL``."""
    if not results:
        return target
    if results == "memcache":
        return Target(target.name, target.broker, _env("MEMCACHE_URL"), target.service)
    if results == "redis":
        return Target(target.name, target.broker, _env("REDIS_URL"), target.service)
    raise SystemExit(f"unknown results {results!r}: leave it out, or use memcache or redis")


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f'{name} is not set: run eval "$(scripts/services env)" first')
    return value


def make_config(target: Target) -> Any:
    from machinery import Config

    config = Config(broker=target.broker, result_backend=target.backend, default_queue=QUEUE)
    config.lock = target.lock
    config.results_expire_in = 24 * 3600
    config.worker.poll_timeout = 0.5
    config.worker.shutdown_grace = 5.0
    config.amqp.exchange = "machinery_chaos"
    config.amqp.binding_key = QUEUE
    return config


# -- a worker process ---------------------------------------------------------------------------------


def worker_main(args: argparse.Namespace) -> None:
    from machinery import Machinery

    target = Target(args.target, args.broker_url, args.backend_url, "", args.lock_url)
    app = Machinery(make_config(target))
    runs = RunLog(args.runs)
    register_tasks(app, runs)
    send_task = app.send_task

    def counting_send(sig: Any) -> Any:
        """Counts each publish of a chord callback (the chord firing), apart from its runs: one line
        each, saying which process sent it, when, and whether a redelivered member's recovery did."""
        result = send_task(sig)
        if sig.name == "chaos_callback":
            how = "recovered" if any(f.function == "_recover_callback" for f in inspect.stack(0)) else "fired"
            runs.append(f"{sig.args[0].value}.fired", f"{how} pid={os.getpid()} t={time.time():.3f}")
        return result

    app.send_task = counting_send  # type: ignore[method-assign,assignment]
    app.worker(f"chaos-{os.getpid()}", concurrency=args.concurrency, queue=QUEUE).launch()


# -- the run --------------------------------------------------------------------------------------------


@dataclass
class Sent:
    kind: str  # add, flaky, chord
    uuid: str  # the result to wait for (the chord's callback)
    key: str  # run-log key of the body (the callback for a chord)
    expected: int  # the result's value
    runs: int  # body runs expected
    members: list[str] = field(default_factory=list)  # a chord's member keys


class Chaos:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        from machinery import Machinery

        self.args = args
        self.workdir = workdir
        self.target = with_results(target_for(args.broker, workdir), args.results)
        if args.lock == "redis":  # Config.lock on Redis instead of the backend's or broker's own
            self.target.lock = _env("REDIS_URL")
        elif args.lock:
            raise SystemExit(f"unknown lock {args.lock!r}: leave it out, or use redis")
        self.runs = RunLog(str(workdir / "runs"))
        self.app = Machinery(make_config(self.target))
        self.sent: list[Sent] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        self.kills = 0
        self.restarts = 0
        self.send_errors = 0
        self.stop_chaos = threading.Event()
        self.rng = random.Random(args.seed)

    # workers ----------------------------------------------------------------------------------
    def spawn_worker(self) -> None:
        log = open(self.workdir / "workers.log", "ab")  # noqa: SIM115 - the child owns it
        cmd = [sys.executable, __file__, "worker", "--target", self.target.name]
        cmd += ["--broker-url", self.target.broker, "--backend-url", self.target.backend]
        cmd += ["--lock-url", self.target.lock]
        cmd += ["--runs", str(self.runs.dir), "--concurrency", str(self.args.concurrency)]
        self.workers.append(subprocess.Popen(cmd, stdout=log, stderr=log))

    def killer(self) -> None:
        while not self.stop_chaos.wait(self.rng.uniform(self.args.kill_min, self.args.kill_max)):
            victim = self.workers.pop(self.rng.randrange(len(self.workers)))
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            self.kills += 1
            self.spawn_worker()

    def restarter(self) -> None:
        if self.args.restarts <= 0 or self.target.service == NO_RESTART:
            return
        period = self.args.minutes * 60 / (self.args.restarts + 1)
        for _ in range(self.args.restarts):
            if self.stop_chaos.wait(period):
                return
            self.restart_server()
            self.restarts += 1

    def restart_server(self) -> None:
        if not self.target.service:  # sqlite: no server; every writer waits on an exclusive lock
            path = self.target.broker.removeprefix("sqlite:///").split("?")[0]
            conn = sqlite3.connect(path, timeout=30, isolation_level=None)
            try:
                conn.execute("BEGIN EXCLUSIVE")
                time.sleep(self.args.outage)
                conn.execute("ROLLBACK")
            finally:
                conn.close()
            return
        subprocess.run(
            [str(REPO / "scripts" / "services"), "restart", self.target.service],
            check=True,
            timeout=300,
            capture_output=True,
        )

    # producing ----------------------------------------------------------------------------------
    def send_one(self, n: int) -> None:
        from machinery import Signature
        from machinery.workflow import Chord, Group

        roll = self.rng.random()
        key = f"k{n}"
        if roll < 0.7:
            a, b = self.rng.randrange(1000), self.rng.randrange(1000)
            sig = Signature("chaos_add", args=[key, a, b])
            self._retrying(lambda: self.app.send_task(sig))
            self.sent.append(Sent("add", sig.uuid, key, a + b, 1))
        elif roll < 0.9:
            sig = Signature("chaos_flaky", args=[key, 2], retry_count=3)
            self._retrying(lambda: self.app.send_task(sig))
            self.sent.append(Sent("flaky", sig.uuid, key, 3, 3))
        else:
            members = [f"{key}m{i}" for i in range(3)]
            values = [self.rng.randrange(100) for _ in members]
            group = Group(
                [Signature("chaos_add", args=[m, v, 0]) for m, v in zip(members, values, strict=True)]
            )
            chord = Chord(group, Signature("chaos_callback", args=[key]))
            result = self._retrying(lambda: self.app.send_chord(chord))
            self.sent.append(Sent("chord", result.uuid, key, sum(values), 1, members))

    def _retrying(self, send: Any) -> Any:
        """Send, retrying while the broker restarts (a send that failed half-way may duplicate)."""
        deadline = time.monotonic() + 120
        while True:
            try:
                return send()
            except Exception:
                self.send_errors += 1
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def produce(self) -> None:
        end = time.monotonic() + self.args.minutes * 60
        interval = 1.0 / self.args.rate
        n = 0
        next_at = time.monotonic()
        while time.monotonic() < end:
            self.send_one(n)
            n += 1
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    # the verdict -----------------------------------------------------------------------------------
    def drain(self) -> dict[str, Any]:
        """Wait for every result to end (at most ``--drain`` seconds); its final state per uuid."""
        from machinery.signature import TaskState

        pending = {s.uuid for s in self.sent}
        final: dict[str, TaskState] = {}
        deadline = time.monotonic() + self.args.drain
        while pending and time.monotonic() < deadline:
            for uuid in list(pending)[:500]:
                try:
                    state = self.app.backend.get_state(uuid)
                except Exception:
                    continue
                if state is not None and state.is_completed:
                    final[uuid] = state
                    pending.discard(uuid)
            if pending:
                time.sleep(0.5)
        return final

    def report(self, final: dict[str, Any], seconds: float) -> dict[str, Any]:
        from machinery import codec

        completed = failed = wrong = lost = 0
        lost_detail: list[str] = []
        reasons: collections.Counter[str] = collections.Counter()
        duplicates = 0
        chords_not_once = callbacks_rerun = unrecorded = 0
        not_once_detail: list[str] = []
        for sent in self.sent:
            state = final.get(sent.uuid)
            if state is None:
                lost += 1
                lost_detail.append(self._describe_lost(sent))
            elif state.is_failure:
                failed += 1
                reasons[state.error[:80]] += 1
            elif codec.values_from_results(state.results) != sent.expected:
                wrong += 1
                reasons[f"wrong value ({sent.kind})"] += 1
            else:
                completed += 1
            runs = self.runs.count(sent.key)
            if sent.kind == "chord":
                fired = self.runs.count(f"{sent.key}.fired")
                if fired == 0 and runs > 0:
                    # published (it ran), but its publisher was SIGKILLed before it could record that
                    unrecorded += 1
                elif fired != 1:
                    chords_not_once += 1
                    not_once_detail.append(self._describe_chord(sent, fired))
                callbacks_rerun += runs > 1
                duplicates += sum(max(0, self.runs.count(m) - 1) for m in sent.members)
            else:
                duplicates += max(0, runs - sent.runs)
        kinds = collections.Counter(s.kind for s in self.sent)
        return {
            "broker": self.target.name,
            "results": self.args.results or "the broker's default",
            "lock": self.args.lock or "the backend's or broker's own (in-process if none)",
            "minutes": round(seconds / 60, 1),
            "sent": len(self.sent),
            "sent_by_kind": dict(kinds),
            "completed": completed,
            "failed": failed,
            "failure_reasons": dict(reasons),
            "lost": lost,
            "lost_tasks": lost_detail[:20],
            "wrong_values": wrong,
            "duplicate_runs": duplicates,
            "chord_callbacks_not_once": chords_not_once,
            "chords_not_once": not_once_detail[:20],
            "chord_fires_unrecorded": unrecorded,
            "chord_callback_bodies_run_again": callbacks_rerun,
            "worker_kills": self.kills,
            "server_restarts": self.restarts,
            "send_retries": self.send_errors,
        }

    def _describe_lost(self, sent: Sent) -> str:
        """What is known about a lost task: its kind, key, uuid, stored state and body runs."""
        try:
            state = self.app.backend.get_state(sent.uuid)
        except Exception as exc:
            state = f"unreadable ({exc})"
        runs = {key: self.runs.count(key) for key in [sent.key, *sent.members]}
        if sent.kind == "chord":
            runs[f"{sent.key}.fired"] = self.runs.count(f"{sent.key}.fired")
        status = getattr(state, "state", state)
        return f"{sent.kind} {sent.key} {sent.uuid}: state {status}, runs {runs}"

    def _describe_chord(self, sent: Sent, fired: int) -> str:
        """A chord whose callback was published other than once: each publish (who, when, how) and runs."""
        try:
            publishes = (self.runs.dir / f"{sent.key}.fired").read_text().split("\n")[:-1]
        except FileNotFoundError:
            publishes = []
        members = {m: self.runs.count(m) for m in sent.members}
        return f"chord {sent.key} {sent.uuid}: published {fired}x {publishes}, member runs {members}"

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        for _ in range(self.args.workers):
            self.spawn_worker()
        chaos = [threading.Thread(target=self.killer), threading.Thread(target=self.restarter)]
        for thread in chaos:
            thread.start()
        try:
            self.produce()
        finally:
            self.stop_chaos.set()
            for thread in chaos:
                thread.join()
        final = self.drain()
        seconds = time.monotonic() - started
        for worker in self.workers:
            worker.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
        result = self.report(final, seconds)
        self.app.close()
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    worker = sub.add_parser("worker", help="(internal) one worker process")
    worker.add_argument("--target", required=True)
    worker.add_argument("--broker-url", required=True)
    worker.add_argument("--backend-url", required=True)
    worker.add_argument("--lock-url", default="")
    worker.add_argument("--runs", required=True)
    worker.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--broker",
        default="sqlite",
        help="sqlite (default), redis, amqp, gcppubsub (kills only), sqs (moto; DynamoDB results, kills "
        "only) or redis+mongodb (MongoDB results)",
    )
    parser.add_argument(
        "--results", default="", help="result backend: the broker's default, or memcache or redis"
    )
    parser.add_argument(
        "--lock",
        default="",
        help="Config.lock: the backend's or broker's own (default; in-process when they have none), or redis",
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to send (default 5)")
    parser.add_argument("--rate", type=float, default=20.0, help="messages sent per second (default 20)")
    parser.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    parser.add_argument("--concurrency", type=int, default=4, help="threads per worker (default 4)")
    parser.add_argument("--kill-min", type=float, default=3.0, help="seconds between kills, at least")
    parser.add_argument("--kill-max", type=float, default=8.0, help="seconds between kills, at most")
    parser.add_argument(
        "--restarts",
        type=int,
        default=None,
        help="server restarts, evenly spread (sqlite: 3, else 1)",
    )
    parser.add_argument("--outage", type=float, default=3.0, help="sqlite: seconds the file stays locked")
    parser.add_argument("--drain", type=float, default=300.0, help="seconds to wait for the last results")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--keep", type=Path, default=None, help="work in this directory and keep it (workers.log, run logs)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.command == "worker":
        worker_main(args)
        return 0
    if args.restarts is None:
        args.restarts = 3 if args.broker == "sqlite" else 1
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = Chaos(args, args.keep).run()
    else:
        with tempfile.TemporaryDirectory(prefix="machinery-chaos-") as tmp:
            result = Chaos(args, Path(tmp)).run()
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["lost"] or result["chord_callbacks_not_once"] or result["wrong_values"] else 0


if __name__ == "__main__":
    sys.exit(main())
