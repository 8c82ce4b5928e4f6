"""The measured systems that live in the project's own virtualenv: Machinery on each broker/backend
combination, and the minimal redis-py loop (the baseline, consumer in :mod:`bench.baseline`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import redis

from machinery import Config, codec
from machinery.signature import Arg, Signature, State, TaskState

from .tasks import READY_ENV, BenchApp, make_app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: States of a finished task as the Redis backend stores them (Go's TaskState JSON).
_FINAL_MARKS = (b'"State":"SUCCESS"', b'"State":"FAILURE"')


def _env_path() -> str:
    return os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)


def _delete_keys(client: Any, keys: Sequence[str | bytes]) -> None:
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        if chunk:
            client.delete(*chunk)


def _query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def _scan_delete(client: Any, pattern: str) -> None:
    _delete_keys(client, list(client.scan_iter(match=pattern, count=1000)))


class MachinerySystem:
    """Machinery with one broker and one backend URL; the worker is the real CLI."""

    def __init__(
        self,
        label: str,
        broker: str,
        backend: str,
        *,
        expires: int = 900,
        worker_env: dict[str, str] | None = None,
        processes: int = 1,
    ) -> None:
        self.name = f"machinery {label}"
        self.worker_env = dict(worker_env or {})  # extra settings for the worker (Config.from_env names)
        self.processes = processes  # worker processes of concurrency 8 (the scaling row: 2)
        self.label = label
        self.tmp = ""
        if broker == "sqlite" or backend == "sqlite":
            self.tmp = tempfile.mkdtemp(prefix="machinery-bench-sqlite-")
            url = f"sqlite:///{self.tmp}/bench.db"
            broker = url if broker == "sqlite" else broker
            backend = url if backend == "sqlite" else backend
        self.queue = f"bench_{uuid.uuid4().hex[:10]}"
        # "{queue}" in a URL: names of this run's own (Pub/Sub subscription, DynamoDB tables)
        self.broker_url = broker.replace("{queue}", self.queue)
        self.backend_url = backend.replace("{queue}", self.queue)
        self.expires = expires
        self.app: BenchApp | None = None
        self.raw: Any = None  # a plain redis-py client on a Redis backend, for cheap completion checks
        self._dynamo: Any = None
        self.sent: list[str] = []

    def _config(self) -> Config:
        return Config(
            broker=self.broker_url,
            result_backend=self.backend_url,
            default_queue=self.queue,
            results_expire_in=self.expires,
        )

    def setup(self) -> None:
        self.app = make_app(self._config())
        self.add = self.app.tasks["add"]
        if urlsplit(self.backend_url).scheme in ("redis", "rediss"):
            self.raw = redis.Redis.from_url(self.backend_url)

    def enqueue_one(self, i: int) -> str:
        assert self.app is not None
        uid = self.app.send_task(self.add.s(i, i)).uuid
        self.sent.append(uid)
        return uid

    def settle(self) -> bool:
        """Wait for the broker's confirms of what was sent (amqp: the outbox); False when the broker
        has nothing of the kind (its sends return confirmed)."""
        assert self.app is not None
        flush = getattr(self.app.broker, "flush", None)
        if flush is None:
            return False
        flush(60.0)
        return True

    def enqueue_batch(self, start: int, count: int) -> list[str]:
        assert self.app is not None
        results = self.app.send_tasks([self.add.s(i, i) for i in range(start, start + count)])
        uids = [r.uuid for r in results]
        self.sent.extend(uids)
        return uids

    def worker_command(self, ready_file: str) -> tuple[list[str], dict[str, str]]:
        argv = [sys.executable, "-m", "machinery", "worker", "-A", "bench.tasks:app", "-c", "8"]
        argv += ["-l", "warning"]
        if self.processes > 1:  # the scaling row: K worker processes, measured as one tree
            argv = [
                sys.executable,
                os.path.join(ROOT, "bench", "workers.py"),
                str(self.processes),
                "--",
                *argv,
            ]
        env = {
            "BROKER": self.broker_url,
            "RESULT_BACKEND": self.backend_url,
            "DEFAULT_QUEUE": self.queue,
            "RESULTS_EXPIRE_IN": str(self.expires),
            READY_ENV: ready_file,
            "PYTHONPATH": _env_path(),
            **self.worker_env,
        }
        return argv, env

    def done(self, ids: Sequence[str]) -> list[bool]:
        if self.raw is not None:
            values = self.raw.mget(ids)
            return [v is not None and (_FINAL_MARKS[0] in v or _FINAL_MARKS[1] in v) for v in values]
        if urlsplit(self.backend_url).scheme == "dynamodb":
            return self._dynamodb_done(ids)
        assert self.app is not None
        backend = self.app.backend
        get_states = getattr(backend, "get_states", None)
        states: list[TaskState | None] = (
            get_states(ids) if get_states is not None else [backend.get_state(u) for u in ids]
        )
        return [s is not None and s.state.is_completed for s in states]

    def _dynamodb_done(self, ids: Sequence[str]) -> list[bool]:
        # The DynamoDB backend reads one item per call: the observer reads 100 per BatchGetItem instead,
        # so that it does not load the emulator more than the raw loop's observer does.
        import boto3

        if self._dynamo is None:
            self._dynamo = boto3.client("dynamodb")
        table = _query(self.backend_url)["task_states_table"]
        final: set[str] = set()
        for start in range(0, len(ids), 100):
            keys = [{"TaskUUID": {"S": k}} for k in dict.fromkeys(ids[start : start + 100])]
            request: dict[str, Any] = {table: {"Keys": keys, "ProjectionExpression": "TaskUUID, #s"}}
            request[table]["ExpressionAttributeNames"] = {"#s": "State"}
            while request:
                got = self._dynamo.batch_get_item(RequestItems=request)
                for item in got["Responses"].get(table, []):
                    if item.get("State", {}).get("S") in ("SUCCESS", "FAILURE"):
                        final.add(item["TaskUUID"]["S"])
                request = got.get("UnprocessedKeys") or {}
        return [k in final for k in ids]

    def roundtrip(self, i: int) -> None:
        assert self.app is not None
        result = self.app.send_task(self.add.s(i, 1))
        self.sent.append(result.uuid)
        value = result.get(timeout=10)
        if value != i + 1:
            raise RuntimeError(f"add({i}, 1) returned {value!r}")

    def cleanup(self) -> None:
        app, self.app = self.app, None
        if app is not None:
            with contextlib.suppress(Exception):
                app.close()
        scheme = urlsplit(self.broker_url).scheme
        if scheme in ("redis", "rediss"):
            with contextlib.suppress(Exception):
                client = redis.Redis.from_url(self.broker_url)
                client.delete(self.queue, f"{self.queue}.dead")
                _scan_delete(client, "{" + self.queue + "}*")
        if self.raw is not None:
            with contextlib.suppress(Exception):
                _delete_keys(self.raw, self.sent)
                done = [f"{{{u}}}:machinery:done" for u in self.sent[-400:]]
                waiters = [f"{{{u}}}:machinery:waiter" for u in self.sent[-400:]]
                _delete_keys(self.raw, done + waiters)
        if scheme in ("amqp", "amqps") or urlsplit(self.backend_url).scheme in ("amqp", "amqps"):
            self._amqp_cleanup()
        for cleanup in self._transport_cleanups():
            try:
                cleanup()
            except Exception as exc:  # a leftover queue or table is not worth failing the run
                print(f"{self.name}: cleanup: {type(exc).__name__}: {exc}", file=sys.stderr)
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _transport_cleanups(self) -> list[Callable[[], None]]:
        """What deletes this run's queues, topics, tables and documents on the newer transports."""
        broker, backend = urlsplit(self.broker_url).scheme, urlsplit(self.backend_url).scheme
        out: list[Callable[[], None]] = []
        if broker == "gcppubsub":
            out.append(self._pubsub_cleanup)
        if broker in ("sqs", "http", "https"):
            out.append(self._sqs_cleanup)
        if backend == "dynamodb":
            out.append(self._dynamodb_cleanup)
        if backend in ("mongodb", "mongodb+srv"):
            out.append(self._mongodb_cleanup)
        return out

    def _pubsub_cleanup(self) -> None:
        from google.cloud import pubsub_v1

        project = urlsplit(self.broker_url).netloc
        publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
        for name in (self.queue, f"{self.queue}-dead-letters"):
            with contextlib.suppress(Exception):
                subscriber.delete_subscription(subscription=subscriber.subscription_path(project, name))
            with contextlib.suppress(Exception):
                publisher.delete_topic(topic=publisher.topic_path(project, name))

    def _sqs_cleanup(self) -> None:
        import boto3

        client: Any = boto3.client("sqs")
        for name in (self.queue, f"{self.queue}-dlq"):
            with contextlib.suppress(Exception):
                client.delete_queue(QueueUrl=client.get_queue_url(QueueName=name)["QueueUrl"])

    def _dynamodb_cleanup(self) -> None:
        import boto3

        client: Any = boto3.client("dynamodb")
        query = _query(self.backend_url)
        for key in ("task_states_table", "group_metas_table"):
            with contextlib.suppress(Exception):
                client.delete_table(TableName=query[key])

    def _mongodb_cleanup(self) -> None:
        import pymongo

        client: Any = pymongo.MongoClient(self.backend_url, serverSelectionTimeoutMS=3000)
        try:
            client.get_database().tasks.delete_many({"_id": {"$in": self.sent}})
        finally:
            client.close()

    def _amqp_cleanup(self) -> None:
        import pika

        amqp_url = self.broker_url if self.broker_url.startswith("amqp") else self.backend_url
        with contextlib.suppress(Exception):
            conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
            ch = conn.channel()
            names = [self.queue]
            if self.backend_url.startswith("amqp"):
                names += self.sent
            for name in names:
                ch.queue_delete(name)
            conn.close()


# -------------------------------------------------------------------------------------------- baseline
def message_template() -> dict[str, Any]:
    """The JSON object of a Machinery ``add(i, i)`` message: the baseline sends the same bytes' size."""
    sig = Signature("add", [Arg(0, "int64"), Arg(0, "int64")], routing_key="machinery_tasks")
    sig.ensure_uuid()
    return orjson.loads(codec.encode_signature(sig))  # type: ignore[no-any-return]


def result_template() -> dict[str, Any]:
    """The JSON object of the SUCCESS state Machinery stores for ``add``."""
    state = TaskState("task_" + str(uuid.uuid4()), State.SUCCESS, task_name="add")
    state.results = codec.results_from_return(0)
    return orjson.loads(codec.encode_state(state))  # type: ignore[no-any-return]


class BaselineSystem:
    """The minimal redis-py loop: RPUSH JSON (one by one, or one pipelined RPUSH per batch); a consumer
    process pops up to 100 (BLMPOP), adds, and stores each result with a pipelined ``SET key value EX``.
    A round trip: RPUSH with a reply key, BLPOP on it (the consumer RPUSHes the result there too)."""

    def __init__(self, url: str) -> None:
        self.name = "redis-py minimal loop"
        self.url = url
        self.queue = f"bench_base_{uuid.uuid4().hex[:10]}"
        self.sent: list[str] = []
        self.client: Any = None

    def setup(self) -> None:
        self.client = redis.Redis.from_url(self.url)
        self.template = message_template()
        self.template["RoutingKey"] = self.queue

    def _body(self, i: int, reply: str = "") -> tuple[str, bytes]:
        msg = dict(self.template)
        uid = f"task_{uuid.uuid4()}"
        msg["UUID"] = uid
        msg["Args"] = [{"Name": "", "Type": "int64", "Value": i}, {"Name": "", "Type": "int64", "Value": i}]
        if reply:
            msg["ReplyTo"] = reply
        return uid, orjson.dumps(msg)

    def enqueue_one(self, i: int) -> str:
        uid, body = self._body(i)
        self.client.rpush(self.queue, body)
        self.sent.append(uid)
        return uid

    def enqueue_batch(self, start: int, count: int) -> list[str]:
        pairs = [self._body(i) for i in range(start, start + count)]
        pipe = self.client.pipeline(transaction=False)
        pipe.rpush(self.queue, *[body for _, body in pairs])
        pipe.execute()
        uids = [uid for uid, _ in pairs]
        self.sent.extend(uids)
        return uids

    def worker_command(self, ready_file: str) -> tuple[list[str], dict[str, str]]:
        argv = [sys.executable, "-m", "bench.baseline", self.url, self.queue, ready_file]
        return argv, {"PYTHONPATH": _env_path()}

    def done(self, ids: Sequence[str]) -> list[bool]:
        return [v is not None for v in self.client.mget(ids)]

    def roundtrip(self, i: int) -> None:
        reply = f"{self.queue}:reply:{i}"
        uid, body = self._body(i, reply)
        self.sent.append(uid)
        self.client.rpush(self.queue, body)
        got = self.client.blpop([reply], timeout=10)
        if got is None:
            raise RuntimeError("no reply within 10 s")

    def cleanup(self) -> None:
        if self.client is None:
            return
        self.client.delete(self.queue)
        _scan_delete(self.client, f"{self.queue}:*")
        _delete_keys(self.client, self.sent)
        self.client.close()
