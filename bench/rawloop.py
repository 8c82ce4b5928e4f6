"""Raw-client baselines of the transports (issue 24): the same work as a Machinery row, written as the
smallest loop the transport's own client library allows, measured in the same run.

A raw loop is a *queue* (the broker's client) and a *store* (the result backend's client). Queues:

- redis (redis-py): ``RPUSH`` one, or one pipelined ``RPUSH`` per batch; the consumer ``BLMPOP``s up to
  100; nothing to ack.
- amqp (pika): ``basic_publish`` of a persistent message to a durable queue through the default
  exchange, without publisher confirms (one by one and in batches: the cheapest pika allows); the
  consumer holds up to 100 (``basic_qos``), takes what arrived and acks the batch with one
  ``basic_ack(multiple=True)`` once its results are stored.
- sqs (boto3): ``SendMessage``, or ``SendMessageBatch`` (10 per call); the consumer ``ReceiveMessage``s
  up to 10 (long poll 1 s) and ``DeleteMessageBatch``es them once their results are stored.
- pubsub (google-cloud-pubsub): ``publish().result()``, or all the futures of a batch, then wait; the
  consumer ``pull``s up to 100 (synchronous pull) and ``acknowledge``s them once their results are stored.

Stores:

| store | client | write (one call per fetched batch) | read (the observer, the round trip) |
|---|---|---|---|
| redis | redis-py | pipelined ``SET uuid state EX 3600`` | ``MGET`` |
| dynamodb | boto3 | ``BatchWriteItem`` (25 per call) | ``BatchGetItem`` (100 per call) |
| mongodb | pymongo | ``insert_many`` (unordered) | ``find({_id: {$in: ...}})`` |
| memcache | pymemcache (``HashClient`` over the URL's servers) | ``set_many`` with expiry | ``get_many`` |

The message is the JSON of a Machinery ``add(i, i)`` message and the stored value the JSON of its SUCCESS
state (the sizes Machinery sends and stores). The loop stores one state per task (Machinery stores PENDING,
RECEIVED, STARTED and SUCCESS), decodes with orjson, and has no retries, leases or error handling: it is
what the transport costs, not a task queue. A round trip publishes one message and reads the store every
0.5 ms until its result is there.

The consumer runs as its own process: ``python -m bench.rawloop SPEC_JSON READY_FILE``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import orjson

#: How each queue and store is named in row labels.
LIBRARIES = {
    "redis": "redis-py",
    "amqp": "pika",
    "sqs": "boto3",
    "pubsub": "google-cloud-pubsub",
    "dynamodb": "boto3",
    "mongodb": "pymongo",
    "memcache": "pymemcache",
}
PUBSUB_PROJECT = "machinery-bench"


def _env_path() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)


# ---------------------------------------------------------------------------------------------- queues
class RedisQueue:
    def __init__(self, spec: dict[str, Any]) -> None:
        import redis

        self.name = spec["queue"]
        self.client: Any = redis.Redis.from_url(spec["redis_url"])

    def create(self) -> None:
        return None

    def publish(self, bodies: Sequence[bytes]) -> None:
        if len(bodies) == 1:
            self.client.rpush(self.name, bodies[0])
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.rpush(self.name, *bodies)
        pipe.execute()

    def fetch(self) -> tuple[list[bytes], Any]:
        popped = self.client.blmpop(1, 1, self.name, direction="LEFT", count=100)
        return (list(popped[1]), None) if popped else ([], None)

    def ack(self, _token: Any) -> None:
        return None

    def delete(self, _keys: Sequence[str]) -> None:
        self.client.delete(self.name)


class AMQPQueue:
    def __init__(self, spec: dict[str, Any]) -> None:
        import pika

        self.name = spec["queue"]
        self.connection: Any = pika.BlockingConnection(pika.URLParameters(spec["amqp_url"]))
        self.channel: Any = self.connection.channel()
        self.properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
        self.buffer: list[tuple[int, bytes]] = []
        self.consuming = False

    def create(self) -> None:
        self.channel.queue_declare(self.name, durable=True)

    def publish(self, bodies: Sequence[bytes]) -> None:
        for body in bodies:
            self.channel.basic_publish("", self.name, body, self.properties)

    def _on_message(self, _channel: Any, method: Any, _properties: Any, body: bytes) -> None:
        self.buffer.append((method.delivery_tag, body))

    def fetch(self) -> tuple[list[bytes], Any]:
        if not self.consuming:
            self.channel.basic_qos(prefetch_count=100)
            self.channel.basic_consume(self.name, self._on_message)
            self.consuming = True
        # returns as soon as deliveries arrived (or after 1 s)
        self.connection.process_data_events(time_limit=0 if self.buffer else 1)
        batch, self.buffer = self.buffer[:100], self.buffer[100:]
        return [body for _, body in batch], (batch[-1][0] if batch else None)

    def ack(self, token: Any) -> None:
        if token is not None:
            self.channel.basic_ack(token, multiple=True)

    def delete(self, _keys: Sequence[str]) -> None:
        self.channel.queue_delete(self.name)
        self.connection.close()


class SQSQueue:
    def __init__(self, spec: dict[str, Any]) -> None:
        import boto3

        self.name = spec["queue"]
        self.client: Any = boto3.client("sqs", endpoint_url=spec.get("sqs_endpoint") or None)
        self.url = ""

    def create(self) -> None:
        self.url = self.client.create_queue(QueueName=self.name)["QueueUrl"]

    def _url(self) -> str:
        if not self.url:
            self.url = self.client.get_queue_url(QueueName=self.name)["QueueUrl"]
        return self.url

    def publish(self, bodies: Sequence[bytes]) -> None:
        if len(bodies) == 1:
            self.client.send_message(QueueUrl=self._url(), MessageBody=bodies[0].decode())
            return
        for start in range(0, len(bodies), 10):
            entries = [
                {"Id": str(i), "MessageBody": body.decode()}
                for i, body in enumerate(bodies[start : start + 10])
            ]
            self.client.send_message_batch(QueueUrl=self._url(), Entries=entries)

    def fetch(self) -> tuple[list[bytes], Any]:
        got = self.client.receive_message(QueueUrl=self._url(), MaxNumberOfMessages=10, WaitTimeSeconds=1)
        messages = got.get("Messages", [])
        return [m["Body"].encode() for m in messages], [m["ReceiptHandle"] for m in messages]

    def ack(self, token: Any) -> None:
        if token:
            entries = [{"Id": str(i), "ReceiptHandle": handle} for i, handle in enumerate(token)]
            self.client.delete_message_batch(QueueUrl=self._url(), Entries=entries)

    def delete(self, _keys: Sequence[str]) -> None:
        self.client.delete_queue(QueueUrl=self._url())


class PubSubQueue:
    def __init__(self, spec: dict[str, Any]) -> None:
        from google.cloud import pubsub_v1

        self.name = spec["queue"]
        self.publisher: Any = pubsub_v1.PublisherClient()
        self.subscriber: Any = pubsub_v1.SubscriberClient()
        self.topic = self.publisher.topic_path(PUBSUB_PROJECT, self.name)
        self.subscription = self.subscriber.subscription_path(PUBSUB_PROJECT, self.name)

    def create(self) -> None:
        self.publisher.create_topic(name=self.topic)
        self.subscriber.create_subscription(name=self.subscription, topic=self.topic, ack_deadline_seconds=60)

    def publish(self, bodies: Sequence[bytes]) -> None:
        futures = [self.publisher.publish(self.topic, body) for body in bodies]
        for future in futures:
            future.result()

    def fetch(self) -> tuple[list[bytes], Any]:
        got = self.subscriber.pull(subscription=self.subscription, max_messages=100, timeout=5)
        received = got.received_messages
        return [m.message.data for m in received], [m.ack_id for m in received]

    def ack(self, token: Any) -> None:
        if token:
            self.subscriber.acknowledge(subscription=self.subscription, ack_ids=token)

    def delete(self, _keys: Sequence[str]) -> None:
        self.subscriber.delete_subscription(subscription=self.subscription)
        self.publisher.delete_topic(topic=self.topic)


# ---------------------------------------------------------------------------------------------- stores
class RedisStore:
    def __init__(self, spec: dict[str, Any]) -> None:
        import redis

        self.client: Any = redis.Redis.from_url(spec["redis_url"])

    def create(self) -> None:
        return None

    def put(self, items: Sequence[tuple[str, bytes]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key, body in items:
            pipe.set(key, body, ex=3600)
        pipe.execute()

    def present(self, keys: Sequence[str]) -> list[bool]:
        return [v is not None for v in self.client.mget(keys)]

    def delete(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), 1000):
            if keys[start : start + 1000]:
                self.client.delete(*keys[start : start + 1000])


class DynamoStore:
    def __init__(self, spec: dict[str, Any]) -> None:
        import boto3

        self.table = spec["table"]
        self.client: Any = boto3.client("dynamodb", endpoint_url=spec.get("dynamodb_endpoint") or None)

    def create(self) -> None:
        self.client.create_table(
            TableName=self.table,
            KeySchema=[{"AttributeName": "TaskUUID", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "TaskUUID", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        self.client.get_waiter("table_exists").wait(TableName=self.table)

    def put(self, items: Sequence[tuple[str, bytes]]) -> None:
        ttl = str(int(time.time()) + 3600)
        for start in range(0, len(items), 25):
            requests = [
                {
                    "PutRequest": {
                        "Item": {"TaskUUID": {"S": k}, "State": {"S": v.decode()}, "TTL": {"N": ttl}}
                    }
                }
                for k, v in items[start : start + 25]
            ]
            pending: dict[str, Any] = {self.table: requests}
            while pending:
                pending = self.client.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}

    def present(self, keys: Sequence[str]) -> list[bool]:
        found: set[str] = set()
        for start in range(0, len(keys), 100):
            chunk = list(dict.fromkeys(keys[start : start + 100]))
            request: dict[str, Any] = {
                self.table: {
                    "Keys": [{"TaskUUID": {"S": k}} for k in chunk],
                    "ProjectionExpression": "TaskUUID",
                }
            }
            while request:
                got = self.client.batch_get_item(RequestItems=request)
                found.update(item["TaskUUID"]["S"] for item in got["Responses"].get(self.table, []))
                request = got.get("UnprocessedKeys") or {}
        return [k in found for k in keys]

    def delete(self, _keys: Sequence[str]) -> None:
        self.client.delete_table(TableName=self.table)


class MongoStore:
    def __init__(self, spec: dict[str, Any]) -> None:
        import pymongo

        self.client: Any = pymongo.MongoClient(spec["mongodb_url"], serverSelectionTimeoutMS=5000)
        self.collection = self.client.get_database(spec["mongodb_db"])[spec["table"]]

    def create(self) -> None:
        return None

    def put(self, items: Sequence[tuple[str, bytes]]) -> None:
        now = time.time()
        docs = [{"_id": k, "state": orjson.loads(v), "delete_at": now + 3600} for k, v in items]
        self.collection.insert_many(docs, ordered=False)

    def present(self, keys: Sequence[str]) -> list[bool]:
        found = {d["_id"] for d in self.collection.find({"_id": {"$in": list(keys)}}, projection=["_id"])}
        return [k in found for k in keys]

    def delete(self, _keys: Sequence[str]) -> None:
        self.collection.drop()


class MemcacheStore:
    def __init__(self, spec: dict[str, Any]) -> None:
        from pymemcache.client.hash import HashClient

        servers = []
        for part in spec["memcache_url"].split("://", 1)[-1].split("?")[0].strip("/").split(","):
            host, _, port = part.rpartition(":")
            servers.append((host, int(port or 11211)))
        self.client: Any = HashClient(servers, connect_timeout=3, timeout=3)

    def create(self) -> None:
        return None

    def put(self, items: Sequence[tuple[str, bytes]]) -> None:
        self.client.set_many(dict(items), expire=3600)

    def present(self, keys: Sequence[str]) -> list[bool]:
        got = self.client.get_many(list(keys))
        return [k in got for k in keys]

    def delete(self, keys: Sequence[str]) -> None:
        self.client.delete_many(list(keys))


QUEUES = {"redis": RedisQueue, "amqp": AMQPQueue, "sqs": SQSQueue, "pubsub": PubSubQueue}
STORES = {"redis": RedisStore, "dynamodb": DynamoStore, "mongodb": MongoStore, "memcache": MemcacheStore}


# ---------------------------------------------------------------------------------------------- system
def raw_label(queue: str, store: str) -> str:
    """The row name of a raw loop, e.g. ``raw sqs+dynamodb loop (boto3)``."""
    libs = dict.fromkeys((LIBRARIES[queue], LIBRARIES[store]))
    return f"raw {queue}+{store} loop ({' + '.join(libs)})"


class RawLoopSystem:
    """A raw loop as a :class:`bench.harness.System`: the producer side lives here, the consumer in
    :func:`consume` (its own process)."""

    def __init__(self, queue: str, store: str, urls: dict[str, str]) -> None:
        self.name = raw_label(queue, store)
        tag = uuid.uuid4().hex[:10]
        self.spec: dict[str, Any] = {
            "queue_kind": queue,
            "store_kind": store,
            "queue": f"bench_raw_{tag}",
            "table": f"bench_raw_{tag}",
            **urls,
        }
        self.sent: list[str] = []
        self.queue: Any = None
        self.store: Any = None

    def setup(self) -> None:
        from .systems import message_template

        self.template = message_template()
        self.template["RoutingKey"] = self.spec["queue"]
        self.queue = QUEUES[self.spec["queue_kind"]](self.spec)
        self.store = STORES[self.spec["store_kind"]](self.spec)
        self.queue.create()
        self.store.create()

    def _body(self, i: int) -> tuple[str, bytes]:
        msg = dict(self.template)
        uid = f"task_{uuid.uuid4()}"
        msg["UUID"] = uid
        msg["Args"] = [{"Name": "", "Type": "int64", "Value": i}, {"Name": "", "Type": "int64", "Value": i}]
        self.sent.append(uid)
        return uid, orjson.dumps(msg)

    def enqueue_one(self, i: int) -> str:
        uid, body = self._body(i)
        self.queue.publish([body])
        return uid

    def enqueue_batch(self, start: int, count: int) -> list[str]:
        pairs = [self._body(i) for i in range(start, start + count)]
        self.queue.publish([body for _, body in pairs])
        return [uid for uid, _ in pairs]

    def worker_command(self, ready_file: str) -> tuple[list[str], dict[str, str]]:
        argv = [sys.executable, "-m", "bench.rawloop", orjson.dumps(self.spec).decode(), ready_file]
        return argv, {"PYTHONPATH": _env_path()}

    def done(self, ids: Sequence[str]) -> list[bool]:
        return self.store.present(ids)  # type: ignore[no-any-return]

    def roundtrip(self, i: int) -> None:
        uid = self.enqueue_one(i)
        deadline = time.monotonic() + 10
        while not self.store.present([uid])[0]:
            if time.monotonic() > deadline:
                raise RuntimeError("no result within 10 s")
            time.sleep(0.0005)

    def cleanup(self) -> None:
        for part in (self.queue, self.store):
            if part is None:
                continue
            try:
                part.delete(self.sent)
            except Exception as exc:  # a leftover queue or table is not worth failing the run
                print(f"{self.name}: cleanup: {type(exc).__name__}: {exc}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- consumer
def consume(spec: dict[str, Any], ready_file: str) -> None:
    """Fetch, add, store every result of the batch in one call, then ack the batch; until killed."""
    from .systems import result_template

    queue = QUEUES[spec["queue_kind"]](spec)
    store = STORES[spec["store_kind"]](spec)
    template = result_template()
    with open(ready_file, "w") as f:
        f.write(f"{time.time():.6f}\n")
    while True:
        bodies, token = queue.fetch()
        if not bodies:
            continue
        items = []
        for raw in bodies:
            msg = orjson.loads(raw)
            state = dict(template)
            state["TaskUUID"] = msg["UUID"]
            state["Results"] = [{"Type": "int64", "Value": sum(arg["Value"] for arg in msg["Args"])}]
            items.append((msg["UUID"], orjson.dumps(state)))
        store.put(items)
        queue.ack(token)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    consume(orjson.loads(sys.argv[1]), sys.argv[2])
