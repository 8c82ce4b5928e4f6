"""Machinery's benchmark (issue 10): every broker/backend combination against a minimal redis-py loop
measured in the same run, optionally next to Dramatiq and Celery. See bench/README.md.

    make bench                                   # = scripts/services run -- .venv/bin/python bench/run.py
    .venv/bin/python bench/run.py [--quick] [--peers] [--n N] [--repeats R] [--only redis/redis,...]

Needs REDIS_URL (and AMQP_URL for the amqp combinations; PUBSUB_EMULATOR_HOST, SQS_BROKER_URL,
AWS_ENDPOINT_URL_DYNAMODB, MONGODB_URL, MEMCACHE_URL for the transport rows, each measured next to a
raw-client loop of bench/rawloop.py) in the environment, as ``eval "$(scripts/services env)"`` sets
them; a combination whose plugin or server is missing is skipped with the reason. Writes
bench/results/<stamp>.json and .md (and bench/latest.md and bench/latest.png after a full run), and
prints the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench import harness, report  # noqa: E402
from bench.rawloop import PUBSUB_PROJECT, raw_label  # noqa: E402

BENCH = os.path.join(ROOT, "bench")
RESULTS = os.path.join(BENCH, "results")
PEERS_VENV = os.environ.get("MACHINERY_BENCH_PEERS_VENV", "/tmp/machinery-bench-peers")
PEER_REQUIREMENTS = [
    "dramatiq[redis,rabbitmq]==2.2.1",
    "celery[redis]==5.7.0",
    "redis==8.1.0",
    "hiredis==3.5.0",
]
#: Peers: key -> whether it runs in the pinned peers' virtualenv (False: this one, the bench group).
PEERS = {"dramatiq": True, "celery": True, "dramatiq-rabbitmq": True, "huey": False}

#: Rough rates (enqueue one by one, batched, processed per second) for the ETA of each step.
GUESS = {
    "baseline": (3000, 60000, 30000),
    "redis/redis": (1200, 12000, 4000),
    "redis/redis-prefetch4": (1200, 12000, 6000),
    "redis/redis-x2": (1200, 12000, 7000),
    "sqlite/sqlite": (2500, 20000, 2500),
    "raw-amqp+redis": (5000, 20000, 5000),
    "amqp/redis": (3000, 5000, 1500),
    "amqp/redis-prefetch3": (3000, 5000, 2500),
    "amqp/amqp": (110, 130, 200),
    "dramatiq": (1800, 1800, 1600),
    "celery": (600, 600, 250),
    "huey": (3000, 3000, 1200),
    "dramatiq-rabbitmq": (2000, 2000, 1500),
    # the newer transports (issue 24), each after its raw-client loop; emulators: small N
    "raw-pubsub+redis": (150, 1500, 800),
    "gcppubsub/redis": (100, 300, 150),
    "raw-sqs+dynamodb": (100, 400, 300),
    "sqs/dynamodb": (60, 200, 80),
    "raw-sqs+redis": (100, 400, 400),
    "sqs/redis": (80, 300, 150),
    "raw-redis+mongodb": (2000, 3000, 1500),
    "redis/mongodb": (100, 800, 250),
    "raw-redis+memcache": (3000, 30000, 20000),
    "redis/memcache": (250, 10000, 2000),
}
#: The transport rows: key -> (queue, store) of the raw loop measured next to it, in the same round.
TRANSPORTS = {
    "gcppubsub/redis": ("pubsub", "redis"),
    "sqs/dynamodb": ("sqs", "dynamodb"),
    "sqs/redis": ("sqs", "redis"),
    "redis/mongodb": ("redis", "mongodb"),
    "redis/memcache": ("redis", "memcache"),
}
#: Rows whose server is an emulator written for tests (moto, the Pub/Sub emulator, SecantusDB): N is
#: --emulator-n and W2 at most 100 round trips, or a run would take most of an hour.
EMULATED_SERVERS = {
    "pubsub": "Google's Pub/Sub emulator",
    "sqs": "moto",
    "dynamodb": "moto",
    "mongodb": "SecantusDB (a MongoDB-wire server in Python)",
}
EMULATED = tuple(EMULATED_SERVERS)
FIXED = 9.0  # seconds of W2 + W3 + start-up per step


@dataclass
class Step:
    key: str  # GUESS key
    label: str
    n: int
    round: int
    make: Callable[[], Any] | None = None  # a harness.System, for systems of this virtualenv
    peer: str = ""  # a peer name, run in the peers' virtualenv
    estimate: float = 0.0
    notes: list[str] = field(default_factory=list)
    baseline: str = report.BASELINE  # the row its ratios are taken against
    rounds: int = 0  # W2 round trips (0: --rounds)
    server_pids: list[int] = field(default_factory=list)  # whose CPU per task is reported


def _estimate(key: str, n: int) -> float:
    one, batch, processed = GUESS[key]
    return n / one + n / batch + 2 * n / processed + FIXED


def _with_db(url: str, db: int | None) -> str:
    if db is None:
        return url
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def bench_redis_url(args: argparse.Namespace) -> str:
    if not args.redis_url:
        return ""
    return _with_db(args.redis_url, None if args.redis_db < 0 else args.redis_db)


def _redis_ok(url: str) -> str:
    """'' when Redis answers at ``url``, else why not."""
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except Exception as exc:
        return f"Redis at {url} does not answer ({exc})"
    return ""


def _amqp_ok(url: str) -> str:
    try:
        import pika

        params = pika.URLParameters(url)
        params.socket_timeout = 3
        pika.BlockingConnection(params).close()
    except Exception as exc:
        return f"RabbitMQ at {url.split('@')[-1]} does not answer ({type(exc).__name__} {exc})"
    return ""


def _plugin_ok(module: str, package: str) -> str:
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent is missing
        found = False
    return "" if found else f"{package} is not installed"


def _tcp_ok(what: str, hostport: str, default_port: int) -> str:
    """'' when something listens at ``host:port``, else why not (no request: any server will do)."""
    import socket

    host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port or default_port)), 3).close()
    except (OSError, ValueError) as exc:
        return f"{what} at {hostport} does not answer ({exc})"
    return ""


def _mongodb_ok(url: str) -> str:
    try:
        import pymongo

        client: Any = pymongo.MongoClient(url, serverSelectionTimeoutMS=3000)
        try:
            client.admin.command("ping")
        finally:
            client.close()
    except Exception as exc:
        return f"MongoDB at {urlsplit(url).hostname} does not answer ({type(exc).__name__})"
    return ""


def _endpoint_hostport(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def transport_urls(args: argparse.Namespace) -> dict[str, str]:
    """The servers of the transport rows, from the options (default: scripts/services' environment)."""
    mongodb = args.mongodb_url
    return {
        "redis_url": bench_redis_url(args),
        "pubsub_host": args.pubsub_emulator,
        "sqs_url": args.sqs_url,
        "sqs_endpoint": os.environ.get("AWS_ENDPOINT_URL_SQS") or os.environ.get("SQS_ENDPOINT_URL", ""),
        "dynamodb_endpoint": args.dynamodb_endpoint,
        "mongodb_url": mongodb,
        "mongodb_db": "machinery_bench",
        "memcache_url": args.memcache_url,
    }


def transport_why_not(part: str, urls: dict[str, str]) -> list[str]:
    """Why a queue or store of a transport row cannot be measured ([] when it can)."""
    if part == "redis":
        url = urls["redis_url"]
        return ["REDIS_URL is not set" if not url else _redis_ok(url)]
    if part == "pubsub":
        host = urls["pubsub_host"]
        if not host:
            return ["PUBSUB_EMULATOR_HOST is not set (only the emulator is benchmarked)"]
        return [
            _tcp_ok("the Pub/Sub emulator", host, 8085),
            _plugin_ok("google.cloud.pubsub_v1", "google-cloud-pubsub"),
        ]
    if part == "sqs":
        if not (urls["sqs_url"] and urls["sqs_endpoint"]):
            return [
                "SQS_BROKER_URL / AWS_ENDPOINT_URL_SQS are not set (only a local endpoint is benchmarked)"
            ]
        return [_tcp_ok("SQS", _endpoint_hostport(urls["sqs_endpoint"]), 80), _plugin_ok("boto3", "boto3")]
    if part == "dynamodb":
        if not urls["dynamodb_endpoint"]:
            return ["AWS_ENDPOINT_URL_DYNAMODB is not set (only a local endpoint is benchmarked)"]
        return [
            _tcp_ok("DynamoDB", _endpoint_hostport(urls["dynamodb_endpoint"]), 80),
            _plugin_ok("boto3", "boto3"),
        ]
    if part == "mongodb":
        if not urls["mongodb_url"]:
            return ["MONGODB_URL is not set"]
        reason = _plugin_ok("pymongo", "pymongo")
        return [reason or _mongodb_ok(urls["mongodb_url"])]
    if part == "memcache":
        url = urls["memcache_url"]
        if not url:
            return ["MEMCACHE_URL is not set"]
        hosts = url.split("://", 1)[-1].split("?")[0].strip("/").split(",")
        return [_tcp_ok("memcached", h, 11211) for h in hosts] + [_plugin_ok("pymemcache", "pymemcache")]
    raise ValueError(part)


def server_ports(part: str, urls: dict[str, str]) -> list[int]:
    """The local TCP ports of a queue or store of a transport row (for its server's CPU per task)."""
    local = ("127.0.0.1", "localhost", "::1")

    def port_of(url: str, default: int) -> list[int]:
        parts = urlsplit(url if "://" in url else f"tcp://{url}")
        return [parts.port or default] if parts.hostname in local else []

    if part == "redis":
        return port_of(urls["redis_url"], 6379)
    if part == "pubsub":
        return port_of(urls["pubsub_host"], 8085)
    if part in ("sqs", "dynamodb"):
        return port_of(urls[f"{part}_endpoint"], 80)
    if part == "mongodb":
        return port_of(urls["mongodb_url"], 27017)
    hosts = urls["memcache_url"].split("://", 1)[-1].split("?")[0].strip("/").split(",")
    return [p for h in hosts for p in port_of(h, 11211)]


#: The plugin each transport row's Machinery side needs, by URL scheme part.
PLUGINS = {
    "gcppubsub": ("machinery_gcppubsub", "machinery-gcppubsub"),
    "sqs": ("machinery_sqs", "machinery-sqs"),
    "dynamodb": ("machinery_sqs", "machinery-sqs"),
    "redis": ("machinery_redis", "machinery-redis"),
    "mongodb": ("machinery_mongodb", "machinery-mongodb"),
    "memcache": ("machinery_memcache", "machinery-memcache"),
}


def transport_machinery_urls(urls: dict[str, str]) -> dict[str, str]:
    """Broker/backend URL of each part of a transport row; ``{queue}`` becomes the run's own name."""
    mongodb = urls["mongodb_url"]
    if mongodb:
        parts = urlsplit(mongodb)
        mongodb = urlunsplit((parts.scheme, parts.netloc, "/" + urls["mongodb_db"], parts.query, ""))
    return {
        "gcppubsub": f"gcppubsub://{PUBSUB_PROJECT}/{{queue}}",
        "sqs": urls["sqs_url"],
        "dynamodb": "dynamodb://?task_states_table={queue}_states&group_metas_table={queue}_groups",
        "redis": urls["redis_url"],
        "mongodb": mongodb,
        "memcache": urls["memcache_url"],
    }


# --------------------------------------------------------------------------------------------- machine
def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = ""
    with contextlib.suppress(Exception):
        commit = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "--", "core", "plugins"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        commit += "+dirty" if dirty else ""
    load = ""
    with contextlib.suppress(OSError):
        load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": model or platform.processor(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "commit": commit,
        "load_at_start": load,
    }


def redis_versions(url: str) -> str:
    try:
        import redis

        return str(redis.Redis.from_url(url).info("server")["redis_version"])
    except Exception:
        return "?"


def redis_benchmark(url: str, n: int) -> dict[str, Any]:
    """``redis-benchmark -q -t set,lpush,rpop -n N``: the server's own limit (50 clients, pipeline 1)."""
    exe = shutil.which("redis-benchmark")
    if exe is None:
        return {"error": "redis-benchmark is not installed (apt-get install redis-tools)"}
    parts = urlsplit(url)
    argv = [exe, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
    db = (parts.path or "/0").strip("/") or "0"
    argv += ["--dbnum", db, "-q", "-t", "set,lpush,rpop", "-n", str(n)]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120).stdout
    except subprocess.TimeoutExpired:
        return {"error": "redis-benchmark took more than 120 s"}
    rates: dict[str, Any] = {"command": " ".join(["redis-benchmark", *argv[5:]])}
    pattern = r"([A-Z]+): ([\d.]+) requests per second(?:, p50=([\d.]+) msec)?"
    for name, value, p50 in re.findall(pattern, out):
        rates[name] = {"per_s": float(value), "p50_ms": float(p50) if p50 else math.nan}
    with contextlib.suppress(Exception):
        import redis

        redis.Redis.from_url(url).delete("key:__rand_int__", "mylist")
    return rates


# ----------------------------------------------------------------------------------------------- peers
def peers_python(progress: Callable[[str], None]) -> str:
    """The peers' virtualenv's python, created (pinned versions) when missing."""
    python = os.path.join(PEERS_VENV, "bin", "python")
    marker = os.path.join(PEERS_VENV, ".bench-requirements")
    wanted = "\n".join(PEER_REQUIREMENTS)
    if os.path.exists(python) and os.path.exists(marker):
        with open(marker) as f:
            if f.read() == wanted:
                return python
    progress(f"peers: installing {', '.join(PEER_REQUIREMENTS)} into {PEERS_VENV}")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", PEERS_VENV], check=True)
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PEER_REQUIREMENTS],
        check=True,
    )
    with open(marker, "w") as f:
        f.write(wanted)
    return python


def run_peer(
    python: str, peer: str, url: str, opts: harness.Options, progress: Callable[[str], None]
) -> dict[str, Any]:
    fd, out = tempfile.mkstemp(prefix="machinery-bench-peer-", suffix=".json")
    os.close(fd)
    argv = [python, os.path.join(BENCH, "peers", "runner.py"), peer, url, out]
    argv += ["--n", str(opts.n), "--batch", str(opts.batch), "--rounds", str(opts.rounds)]
    argv += ["--idle", str(opts.idle_seconds), "--limit", str(opts.drain_limit), "--log-dir", opts.log_dir]
    try:
        proc = subprocess.run(argv, cwd=ROOT, timeout=opts.drain_limit * 2 + 600)
        with open(out) as f:
            text = f.read()
        if proc.returncode or not text:
            raise RuntimeError(f"the peer runner exited with code {proc.returncode}")
        return json.loads(text)  # type: ignore[no-any-return]
    except Exception as exc:
        progress(f"{peer}: FAILED: {exc}")
        return harness.Outcome(peer, opts.n, error=f"{type(exc).__name__}: {exc}").as_dict()
    finally:
        with contextlib.suppress(OSError):
            os.unlink(out)


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Machinery's benchmark (bench/README.md).")
    p.add_argument("--quick", action="store_true", help="N=2000, 1 repeat, no peers; latest.* untouched")
    p.add_argument("--peers", action="store_true", help="also Dramatiq and Celery (own virtualenv)")
    p.add_argument("--n", type=int, help="tasks per enqueue phase (default 10,000; 2,000 with --quick)")
    p.add_argument("--amqp-n", type=int, help="N for amqp/amqp (default min(N, 2,000): one queue per result)")
    p.add_argument("--repeats", type=int, help="interleaved repeats on Redis (default 3; 1 with --quick)")
    p.add_argument("--rounds", type=int, default=300, help="W2 round trips (default 300)")
    p.add_argument("--batch", type=int, default=1000, help="send_tasks / pipeline batch size (default 1000)")
    p.add_argument(
        "--only",
        default="",
        help="comma-separated: baseline,redis/redis,redis/redis-prefetch4,redis/redis-x2,sqlite/sqlite,huey,"
        "amqp/redis,amqp/redis-prefetch3,raw-amqp+redis,dramatiq-rabbitmq,...,gcppubsub/redis,sqs/dynamodb,sqs/redis,"
        "redis/mongodb,redis/memcache (a transport row brings its raw loop)",
    )
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""), help="default $REDIS_URL")
    p.add_argument("--redis-db", type=int, default=9, help="Redis database used (default 9; -1: the URL's)")
    p.add_argument("--amqp-url", default=os.environ.get("AMQP_URL", ""), help="default $AMQP_URL")
    p.add_argument("--memcache-url", default=os.environ.get("MEMCACHE_URL", ""), help="default $MEMCACHE_URL")
    p.add_argument("--mongodb-url", default=os.environ.get("MONGODB_URL", ""), help="default $MONGODB_URL")
    p.add_argument("--sqs-url", default=os.environ.get("SQS_BROKER_URL", ""), help="default $SQS_BROKER_URL")
    p.add_argument(
        "--dynamodb-endpoint",
        default=os.environ.get("AWS_ENDPOINT_URL_DYNAMODB") or os.environ.get("DYNAMODB_ENDPOINT_URL", ""),
        help="default $AWS_ENDPOINT_URL_DYNAMODB",
    )
    p.add_argument(
        "--pubsub-emulator",
        default=os.environ.get("PUBSUB_EMULATOR_HOST", ""),
        help="host:port, default $PUBSUB_EMULATOR_HOST",
    )
    p.add_argument(
        "--emulator-n",
        type=int,
        default=500,
        help="N of the rows on emulators (Pub/Sub emulator, moto, SecantusDB) and their raw loops "
        "(default 500; 200 with --quick)",
    )
    p.add_argument("--limit", type=float, default=240.0, help="seconds a drain may take (default 240)")
    p.add_argument("--budget", type=float, default=19 * 60, help="seconds for the whole run (default 1140)")
    p.add_argument(
        "--redis-fsync",
        default="everysec",
        choices=["everysec", "no", "always", "keep"],
        help="appendfsync of the Redis server during the run, restored after (default everysec; "
        "scripts/services runs Redis with 'always', which makes every write wait for the disk)",
    )
    p.add_argument("--render", metavar="JSON", help="only rewrite the tables and chart of a results/*.json")
    p.add_argument("--no-latest", action="store_true", help="do not update bench/latest.md and .png")
    return p.parse_args(argv)


def plan(args: argparse.Namespace, progress: Callable[[str], None]) -> tuple[list[Step], list[str]]:
    from bench.rawloop import RawLoopSystem
    from bench.systems import BaselineSystem, MachinerySystem

    n = args.n or (2000 if args.quick else 10_000)
    repeats = args.repeats or (1 if args.quick else 3)
    amqp_n = args.amqp_n or min(n, 500 if args.quick else 2000)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    redis_url = bench_redis_url(args)
    amqp_url = args.amqp_url
    skipped: list[str] = []

    def why_not(key: str) -> str:
        needs_redis = "redis" in key or key in ("baseline", "dramatiq", "celery")
        needs_amqp = "amqp" in key or key == "dramatiq-rabbitmq"
        reasons = []
        if needs_redis:
            reasons.append("REDIS_URL is not set" if not redis_url else _redis_ok(redis_url))
            if key.startswith(("redis", "amqp/redis")):
                reasons.append(_plugin_ok("machinery_redis", "machinery-redis"))
        if needs_amqp:
            reasons.append("AMQP_URL is not set" if not amqp_url else _amqp_ok(amqp_url))
            if key != "dramatiq-rabbitmq":
                reasons.append(_plugin_ok("machinery_amqp", "machinery-amqp"))
        if key == "huey":
            reasons.append(_plugin_ok("huey", "huey (the bench dependency group: make bench)"))
        return "; ".join(r for r in reasons if r)

    def wanted(key: str) -> bool:
        if only and key not in only:
            return False
        reason = why_not(key)
        if reason:
            skipped.append(f"{key}: skipped ({reason})")
            progress(f"{key}: skipped: {reason}")
            return False
        return True

    def machinery(label: str, broker: str, backend: str, processes: int = 1, **env: str) -> Callable[[], Any]:
        return lambda: MachinerySystem(label, broker, backend, worker_env=env, processes=processes)

    steps: list[Step] = []
    peers = args.peers and not args.quick
    classic = [k for k in GUESS if k not in TRANSPORTS and not k.startswith("raw-")]
    use = {k: wanted(k) for k in classic if k not in PEERS or peers}
    transports = transport_steps(args, only, repeats, skipped, progress)
    for r in range(repeats):
        if use.get("baseline"):
            steps.append(Step("baseline", "redis-py minimal loop", n, r, lambda: BaselineSystem(redis_url)))
        if use.get("redis/redis"):
            make = machinery("redis/redis", redis_url, redis_url)
            steps.append(Step("redis/redis", "machinery redis/redis", n, r, make))
        if use.get("redis/redis-prefetch4"):
            # The documented knob (Config.worker.prefetch_multiplier): what holding up to 4 x
            # concurrency messages buys, next to the default that never takes more than free slots.
            label = "redis/redis, prefetch x4"
            make = machinery(label, redis_url, redis_url, MACHINERY_WORKER_PREFETCH_MULTIPLIER="4")
            steps.append(Step("redis/redis-prefetch4", f"machinery {label}", n, r, make))
        if use.get("redis/redis-x2"):
            # the scaling row: two worker processes (8 threads each) on the same queue
            label = "redis/redis, 2 processes"
            make = machinery(label, redis_url, redis_url, processes=2)
            steps.append(Step("redis/redis-x2", f"machinery {label}", n, r, make))
        for peer in ("dramatiq", "celery"):
            if use.get(peer):
                steps.append(Step(peer, peer, n, r, peer=peer))
        if r > 0:
            continue
        if use.get("sqlite/sqlite"):
            make = machinery("sqlite/sqlite", "sqlite", "sqlite")
            steps.append(Step("sqlite/sqlite", "machinery sqlite/sqlite", n, -1, make))
        if use.get("huey"):  # the embedded peer, right after sqlite://
            steps.append(Step("huey", "huey", n, -1, peer="huey"))
        # RabbitMQ: the raw pika loop (the baseline of amqp/redis), Machinery, then Dramatiq
        amqp_raw = raw_label("amqp", "redis")
        amqp_rows = use.get("amqp/redis") or use.get("amqp/redis-prefetch3")
        if (amqp_rows or "raw-amqp+redis" in only) and not why_not("amqp/redis"):
            urls = {"amqp_url": amqp_url, "redis_url": redis_url}
            make_raw = partial(RawLoopSystem, "amqp", "redis", urls)
            steps.append(Step("raw-amqp+redis", amqp_raw, n, -1, make_raw))
        else:
            amqp_raw = report.BASELINE
        if use.get("amqp/redis"):
            make = machinery("amqp/redis", amqp_url, redis_url)
            steps.append(Step("amqp/redis", "machinery amqp/redis", n, -1, make, baseline=amqp_raw))
        if use.get("amqp/redis-prefetch3"):
            # Go's default prefetch_count 3 (ours is 0, the worker's free slots): an 8-thread worker then
            # runs at most 3 tasks at once
            label = "amqp/redis, Go's prefetch_count 3"
            make = machinery(label, amqp_url, redis_url, AMQP_PREFETCH_COUNT="3")
            steps.append(Step("amqp/redis-prefetch3", f"machinery {label}", n, -1, make, baseline=amqp_raw))
        if use.get("dramatiq-rabbitmq"):  # the RabbitMQ peer, right after amqp/redis
            steps.append(
                Step("dramatiq-rabbitmq", "dramatiq rabbitmq/redis", n, -1, peer="dramatiq-rabbitmq")
            )
        if use.get("amqp/amqp"):
            note = f"amqp/amqp ran with N = {amqp_n:,} (each result is a RabbitMQ queue)"
            make = machinery("amqp/amqp", amqp_url, amqp_url)
            steps.append(
                Step(
                    "amqp/amqp", "machinery amqp/amqp", amqp_n, -1, make, notes=[note] if amqp_n != n else []
                )
            )
    for r in range(repeats):
        steps += [step for step in transports if step.round == r]
    for step in steps:
        step.estimate = _estimate(step.key, step.n)
    return steps, skipped


def transport_steps(
    args: argparse.Namespace,
    only: set[str],
    repeats: int,
    skipped: list[str],
    progress: Callable[[str], None],
) -> list[Step]:
    """The transport rows asked for (all when --only is empty), each round its raw loop then Machinery."""
    from bench.rawloop import RawLoopSystem
    from bench.systems import MachinerySystem

    urls = transport_urls(args)
    machinery_urls = transport_machinery_urls(urls)
    n_default = args.n or (2000 if args.quick else 10_000)
    emulator_n = min(args.emulator_n if args.emulator_n else 500, 200 if args.quick else 10**9)
    steps: list[Step] = []
    for key, (queue, store) in TRANSPORTS.items():
        raw_key = f"raw-{queue}+{store}"
        if only and key not in only and raw_key not in only:
            continue
        broker, backend = key.split("/")
        reasons = transport_why_not(queue, urls) + transport_why_not(store, urls)
        reasons += [_plugin_ok(*PLUGINS[broker]), _plugin_ok(*PLUGINS[backend])]
        reason = "; ".join(dict.fromkeys(r for r in reasons if r))
        if reason:
            skipped.append(f"{key}: skipped ({reason})")
            progress(f"{key}: skipped: {reason}")
            continue
        emulated = queue in EMULATED or store in EMULATED
        n = emulator_n if emulated else n_default
        rounds = min(args.rounds, 100) if emulated else 0
        servers = ", ".join(dict.fromkeys(EMULATED_SERVERS[p] for p in (queue, store) if p in EMULATED))
        note = [f"N = {n:,}: {servers} (an emulator; read the ratio to the raw loop)"] if emulated else []
        label = raw_label(queue, store)
        ports = dict.fromkeys(server_ports(queue, urls) + server_ports(store, urls))
        pids = sorted({pid for port in ports for pid in harness.listening_pids(port)})
        for r in range(repeats):

            def raw(q: str = queue, st: str = store) -> Any:
                return RawLoopSystem(q, st, urls)

            def ours(k: str = key, b: str = broker, be: str = backend) -> Any:
                return MachinerySystem(k, machinery_urls[b], machinery_urls[be])

            common: dict[str, Any] = {"baseline": label, "rounds": rounds, "server_pids": pids}
            steps.append(Step(raw_key, label, n, r, raw, notes=note[:], **common))
            if not only or key in only:
                steps.append(Step(key, f"machinery {key}", n, r, ours, notes=note[:], **common))
    return steps


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return rerender(args.render, latest=not args.no_latest)
    t_start = time.monotonic()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    os.makedirs(RESULTS, exist_ok=True)
    log_dir = os.path.join(RESULTS, f"{stamp}-logs")
    os.makedirs(log_dir, exist_ok=True)
    progress = harness.Progress()
    info = machine()
    progress(f"machine: {info['nproc']} \u00d7 {info['cpu']}, load {info['load_at_start']}; logs: {log_dir}")
    steps, skipped = plan(args, progress)
    if not steps:
        print("nothing to measure: " + "; ".join(skipped) if skipped else "nothing selected", file=sys.stderr)
        return 2
    redis_url = bench_redis_url(args)
    peers_setup = 60.0 if any(s.peer for s in steps) else 0.0
    progress.planned = sum(s.estimate for s in steps) + (6.0 if redis_url else 0.0) + peers_setup
    progress(f"plan: {len(steps)} measurements, about {progress.planned / 60:.0f} min")

    restore = set_fsync(redis_url, args.redis_fsync, progress) if redis_url else None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return _run(args, argv, t_start, stamp, log_dir, progress, info, steps, skipped, redis_url)
    finally:
        if restore is not None:
            restore()


def set_fsync(url: str, wanted: str, progress: Callable[[str], None]) -> Callable[[], None] | None:
    """Set Redis's ``appendfsync`` to ``wanted`` (unless "keep"); returns what restores it."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3)
        aof = client.config_get("appendonly").get("appendonly", "no")
        before = str(client.config_get("appendfsync").get("appendfsync", ""))
    except Exception as exc:
        progress(f"cannot read the Redis configuration ({exc})")
        return None
    FSYNC["server"] = f"appendonly {aof}, appendfsync {before}"
    if wanted == "keep" or wanted == before:
        return None
    client.config_set("appendfsync", wanted)
    FSYNC["server"] = f"appendonly {aof}, appendfsync {wanted} for the run (server's own: {before})"
    progress(f"Redis appendfsync {before} -> {wanted} for the run (restored at the end; --redis-fsync keep)")

    def restore() -> None:
        try:
            redis.Redis.from_url(url, socket_connect_timeout=3).config_set("appendfsync", before)
        except Exception as exc:
            print(f"could not restore Redis appendfsync {before}: {exc}", file=sys.stderr)

    return restore


FSYNC: dict[str, str] = {"server": "?"}


def _run(
    args: argparse.Namespace,
    argv: list[str] | None,
    t_start: float,
    stamp: str,
    log_dir: str,
    progress: harness.Progress,
    info: dict[str, Any],
    steps: list[Step],
    skipped: list[str],
    redis_url: str,
) -> int:
    bench_n = 100_000 if not args.quick else 20_000
    if args.amqp_url:  # the Dramatiq RabbitMQ peer's runner reads it
        os.environ["BENCH_AMQP_URL"] = args.amqp_url
    rb: dict[str, Any] = {}
    if redis_url and (not args.only or "baseline" in args.only):
        progress(f"redis-benchmark -q -t set,lpush,rpop -n {bench_n:,} (the server's own limit)")
        rb = redis_benchmark(redis_url, bench_n)
        rb["redis_version"] = redis_versions(redis_url)
        rb["persistence"] = FSYNC["server"]
        progress.step_done(6.0, measured=False)
    python = ""
    if any(s.peer and PEERS[s.peer] for s in steps):
        try:
            python = peers_python(progress)
        except Exception as exc:
            skipped.append(f"peers: skipped (could not install them: {exc})")
            steps = [s for s in steps if not (s.peer and PEERS[s.peer])]
        progress.step_done(60.0, measured=False)

    runs: list[dict[str, Any]] = []
    notes: list[str] = []
    for index, step in enumerate(steps, 1):
        if time.monotonic() - t_start + step.estimate > args.budget:
            msg = f"{step.label} (round {step.round + 1}) not run: the {args.budget:.0f} s budget was reached"
            progress(msg)
            notes.append(msg)
            progress.step_done(step.estimate, measured=False)
            continue
        where = f" round {step.round + 1}" if step.round >= 0 else ""
        progress(f"[{index}/{len(steps)}] {step.label}{where}: N = {step.n:,}")
        opts = harness.Options(
            n=step.n,
            batch=args.batch,
            rounds=step.rounds or args.rounds,
            drain_limit=args.limit,
            log_dir=log_dir,
            server_pids=step.server_pids,
        )
        if step.peer:
            outcome = run_peer(
                python if PEERS[step.peer] else sys.executable, step.peer, redis_url, opts, progress
            )
        else:
            assert step.make is not None
            outcome = harness.run_workload(step.make(), opts, progress).as_dict()
        outcome["notes"] = outcome.get("notes", []) + step.notes
        runs.append({"round": step.round, "key": step.key, "baseline": step.baseline, "outcome": outcome})
        progress(_one_line(outcome))
        progress.step_done(step.estimate)

    summ = report.summarise(runs)
    rows = report.targets(summ)
    duration = time.monotonic() - t_start
    command = " ".join(["bench/run.py", *(argv if argv is not None else sys.argv[1:])])
    text = render(info, rb, summ, rows, skipped + notes, duration, command)
    data = {
        "machine": info,
        "command": command,
        "duration_s": duration,
        "options": vars(args),
        "redis_benchmark": rb,
        "skipped": skipped,
        "notes": notes,
        "runs": runs,
        "summary": summ,
        "targets": rows,
    }
    json_path = os.path.join(RESULTS, f"{stamp}.json")
    with open(json_path, "w") as f:
        json.dump(data, f, indent=1, default=str)
    with open(os.path.join(RESULTS, f"{stamp}.md"), "w") as f:
        f.write(text)
    full = not (args.quick or args.only or args.no_latest or args.n or args.repeats)
    png = os.path.join(BENCH, "latest.png") if full else os.path.join(RESULTS, f"{stamp}.png")
    subtitle = f"{info['date'][:10]}, {info['nproc']} \u00d7 {info['cpu']}, load {info['load_at_start']}"
    try:
        report.chart(summ, png, subtitle)
    except Exception as exc:
        print(f"no chart ({type(exc).__name__}: {exc}); pip install matplotlib", file=sys.stderr)
        png = ""
    if full:
        with open(os.path.join(BENCH, "latest.md"), "w") as f:
            f.write(text)
    print(text)
    progress(f"done in {duration / 60:.1f} min: {json_path}" + (f", {png}" if png else ""))
    return 0


def rerender(json_path: str, latest: bool) -> int:
    """Tables and chart again from a run's JSON (after a change to report.py); ``latest``: also
    rewrite bench/latest.md and .png when that run was a full one."""
    with open(json_path) as f:
        data = json.load(f)
    summ = report.summarise(data["runs"])
    rows = report.targets(summ)
    FSYNC["server"] = data.get("redis_benchmark", {}).get("persistence", "?")
    text = render(
        data["machine"],
        data.get("redis_benchmark", {}),
        summ,
        rows,
        data.get("skipped", []) + data.get("notes", []),
        data["duration_s"],
        data["command"],
    )
    opts = data.get("options", {})
    full = latest and not any(opts.get(k) for k in ("quick", "only", "no_latest", "n", "repeats"))
    stem = json_path[: -len(".json")]
    md, png = (
        (os.path.join(BENCH, "latest.md"), os.path.join(BENCH, "latest.png"))
        if full
        else (
            stem + ".md",
            stem + ".png",
        )
    )
    info = data["machine"]
    report.chart(
        summ, png, f"{info['date'][:10]}, {info['nproc']} \u00d7 {info['cpu']}, load {info['load_at_start']}"
    )
    with open(md, "w") as f:
        f.write(text)
    print(text)
    print(f"wrote {md} and {png}", file=sys.stderr)
    return 0


def _one_line(o: dict[str, Any]) -> str:
    if o.get("error"):
        return f"  {o['system']}: error: {o['error']}"
    return (
        f"  {o['system']}: {o['processed_per_s']:,.0f} processed/s, enqueue {o['enqueue_one_per_s']:,.0f}/s "
        f"one by one, {o['enqueue_batch_per_s']:,.0f}/s batched, p50 {o['p50_ms']:.2f} ms, "
        f"{o['worker_cpu_us_per_task']:,.0f} µs CPU/task, {o['worker_peak_rss_mb']:.0f} MB, "
        f"idle {o['idle_cpu_percent']:.2f} %"
    )


def render(
    info: dict[str, Any],
    rb: dict[str, Any],
    summ: dict[str, dict[str, Any]],
    rows: list[dict[str, Any]],
    notes: list[str],
    duration: float,
    command: str,
) -> str:
    lines = [
        f"# Benchmark: {info['date']}",
        "",
        f"Machine: {info['nproc']} \u00d7 {info['cpu']}, Linux {info['kernel']}, Python {info['python']}, "
        f"load average at start {info['load_at_start']}; commit {info['commit'] or '?'}; "
        f"`{command}` took {duration / 60:.1f} min.",
        "",
        "Task `add(x, y)`, every result stored; ONE worker process with 8 threads (start-up excluded); "
        "`tasks` is what one drain ran (N one by one + N batched), \u00d7R for interleaved repeats (median, "
        "range in brackets). Ratios compare each row with its baseline in the same run (same round for "
        "the repeats): the minimal redis-py loop, or for a transport row the raw loop of the same client "
        "libraries listed just above it (bench/rawloop.py).",
        "",
    ]
    if rb and "error" not in rb:
        parts = [f"{k} {v['per_s']:,.0f}/s (p50 {v['p50_ms']:.2f} ms)" for k, v in rb.items() if k.isupper()]
        lines += [
            f"Server limit (`{rb.get('command', 'redis-benchmark')}`, Redis {rb.get('redis_version', '?')}, "
            f"{rb.get('persistence', '?')}): " + ", ".join(parts) + ".",
            "",
        ]
    elif rb:
        lines += [f"redis-benchmark: {rb['error']}", ""]
    lines += [report.tables(summ), "", report.targets_table(rows), ""]
    extra = notes + [f"{name}: {note}" for name, e in summ.items() for note in e["notes"]]
    extra += [f"{name}: {err}" for name, e in summ.items() for err in e["errors"]]
    if extra:
        lines += ["Notes:", ""] + [f"- {n}" for n in extra] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
