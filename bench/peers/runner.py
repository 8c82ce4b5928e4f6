"""Runs W1-W3 (bench/harness.py) for one peer, inside the peers' virtualenv.

    /tmp/machinery-bench-peers/bin/python bench/peers/runner.py dramatiq|celery REDIS_URL OUT.json \
        [--n N] [--batch B] [--rounds R] [--idle S] [--limit S] [--log-dir DIR]

Writes the outcome (and the peer's version) as JSON to OUT.json. ``run.py --peers`` creates the
virtualenv and calls this; it is not meant to be run from the project's own virtualenv.
"""
# mypy: ignore-errors

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import sys
import tempfile
import uuid
from importlib import metadata

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import redis  # noqa: E402

from bench import harness  # noqa: E402


def _env_path():
    return os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)


def _delete(client, keys):
    keys = list(keys)
    for start in range(0, len(keys), 1000):
        if keys[start : start + 1000]:
            client.delete(*keys[start : start + 1000])


class _Peer:
    module = ""

    def __init__(self, url):
        self.url = url
        self.queue = f"bench_{self.name.split()[0]}_{uuid.uuid4().hex[:8]}"
        self.keys = []

    def setup(self):
        os.environ["BENCH_REDIS_URL"] = self.url
        os.environ["BENCH_QUEUE"] = self.queue
        self.mod = importlib.import_module(self.module)
        self.client = redis.Redis.from_url(self.url)

    def enqueue_batch(self, start, count):
        return None

    def _env(self, ready_file):
        return {
            "BENCH_REDIS_URL": self.url,
            "BENCH_QUEUE": self.queue,
            "BENCH_READY_FILE": ready_file,
            "PYTHONPATH": _env_path(),
        }


class DramatiqPeer(_Peer):
    name = "dramatiq (8 threads)"
    module = "bench.peers.dramatiq_app"

    def enqueue_one(self, i):
        key = self.mod.results.build_message_key(self.mod.add.send(i, i))
        self.keys.append(key)
        return key

    def worker_command(self, ready_file):
        argv = [sys.executable, "-m", "dramatiq", self.module, "--processes", "1", "--threads", "8"]
        return argv, self._env(ready_file)

    def done(self, ids):
        pipe = self.client.pipeline(transaction=False)
        for key in ids:
            pipe.exists(key)
        return [bool(v) for v in pipe.execute()]

    def roundtrip(self, i):
        message = self.mod.add.send(i, 1)
        self.keys.append(self.mod.results.build_message_key(message))
        value = message.get_result(block=True, timeout=10_000)
        if value != i + 1:
            raise RuntimeError(f"add({i}, 1) returned {value!r}")

    def cleanup(self):
        with contextlib.suppress(Exception):
            _delete(self.client, self.keys)
            _delete(self.client, self.client.scan_iter(match=f"*{self.queue}*", count=1000))


class DramatiqRabbitmqPeer(DramatiqPeer):
    """Dramatiq's RabbitMQ broker with Redis results (the peer of ``amqp/redis``): ``BENCH_AMQP_URL``."""

    name = "dramatiq rabbitmq/redis (8 threads)"
    module = "bench.peers.dramatiq_rabbitmq_app"

    def _env(self, ready_file):
        return {**super()._env(ready_file), "BENCH_AMQP_URL": os.environ.get("BENCH_AMQP_URL", "")}

    def cleanup(self):
        super().cleanup()
        with contextlib.suppress(Exception):
            channel = self.mod.broker.channel
            for name in (self.queue, f"{self.queue}.DQ", f"{self.queue}.XQ"):
                channel.queue_delete(name)


class CeleryPeer(_Peer):
    name = "celery (threads, 8)"
    module = "bench.peers.celery_app"

    def enqueue_one(self, i):
        key = "celery-task-meta-" + self.mod.add.delay(i, i).id
        self.keys.append(key)
        return key

    def worker_command(self, ready_file):
        argv = [sys.executable, "-m", "celery", "-A", self.module, "worker", "--pool", "threads"]
        argv += ["--concurrency", "8", "--loglevel", "WARNING", "-Q", self.queue]
        return argv, self._env(ready_file)

    def done(self, ids):
        return [v is not None and (b"SUCCESS" in v or b"FAILURE" in v) for v in self.client.mget(ids)]

    def roundtrip(self, i):
        result = self.mod.add.delay(i, 1)
        self.keys.append("celery-task-meta-" + result.id)
        value = result.get(timeout=10)
        if value != i + 1:
            raise RuntimeError(f"add({i}, 1) returned {value!r}")

    def cleanup(self):
        with contextlib.suppress(Exception):
            _delete(self.client, self.keys)
            _delete(self.client, self.client.scan_iter(match=f"*{self.queue}*", count=1000))


class HueyPeer(_Peer):
    """Huey's ``SqliteHuey`` on its own file (the embedded peer of ``sqlite://``); ``url`` is unused."""

    name = "huey (SqliteHuey, 8 threads)"
    module = "bench.peers.huey_app"

    def setup(self):
        self.dir = tempfile.mkdtemp(prefix="machinery-bench-huey-")
        self.path = os.path.join(self.dir, "huey.db")
        os.environ["BENCH_SQLITE_PATH"] = self.path
        os.environ["BENCH_QUEUE"] = self.queue
        self.mod = importlib.import_module(self.module)

    def enqueue_one(self, i):
        return self.mod.add(i, i).id

    def worker_command(self, ready_file):
        # the consumer polls an empty queue with back-off: capped at 50 ms here (default 10 s) so the
        # round trips of W2 measure Huey, not its idle sleep
        argv = [
            sys.executable,
            "-m",
            "huey.bin.huey_consumer",
            f"{self.module}.huey",
            "-w",
            "8",
            "-k",
            "thread",
        ]
        argv += ["-d", "0.001", "-m", "0.05", "-q"]
        env = self._env(ready_file)
        env["BENCH_SQLITE_PATH"] = self.path
        return argv, env

    def done(self, ids):
        found = set(self.mod.huey.storage.peek_many(list(ids)))
        return [key in found for key in ids]

    def roundtrip(self, i):
        value = self.mod.add(i, 1).get(blocking=True, timeout=10)
        if value != i + 1:
            raise RuntimeError(f"add({i}, 1) returned {value!r}")

    def cleanup(self):
        with contextlib.suppress(Exception):
            shutil.rmtree(self.dir)


PEERS = {
    "dramatiq": (DramatiqPeer, "dramatiq"),
    "dramatiq-rabbitmq": (DramatiqRabbitmqPeer, "dramatiq"),
    "celery": (CeleryPeer, "celery"),
    "huey": (HueyPeer, "huey"),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peer", choices=sorted(PEERS))
    parser.add_argument("url")
    parser.add_argument("out")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--idle", type=float, default=3.0)
    parser.add_argument("--limit", type=float, default=300.0)
    parser.add_argument("--log-dir", default="")
    args = parser.parse_args()
    cls, dist = PEERS[args.peer]
    opts = harness.Options(
        n=args.n,
        batch=args.batch,
        rounds=args.rounds,
        idle_seconds=args.idle,
        drain_limit=args.limit,
        log_dir=args.log_dir,
    )

    def progress(text):
        print(f"    {text}", file=sys.stderr, flush=True)

    outcome = harness.run_workload(cls(args.url), opts, progress).as_dict()
    outcome["version"] = metadata.version(dist)
    with open(args.out, "w") as f:
        json.dump(outcome, f)


if __name__ == "__main__":
    main()
