"""Smoke tests for the servers of scripts/services: one round trip per server through the client
library that Machinery's plugin for it uses.

Each test reads its address from the variables printed by `scripts/services env`; run them with
    scripts/services run -- python -m pytest tests/services
A missing variable means that server is not running: a failure when CI=true, a skip otherwise.
"""

import datetime
import os
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from machinery.testing import require_env

pytestmark = pytest.mark.services
RUN = uuid.uuid4().hex[:8]
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "services"


def env(name, server):
    return require_env(name, server)


def hostports(csv):
    """'h1:p1,h2:p2' -> [(h1, p1), (h2, p2)]"""
    return [(h, int(p)) for h, p in (item.rsplit(":", 1) for item in csv.split(","))]


def roundtrip(r):
    """SET/GET and LPUSH/BRPOP (a Machinery queue) on one redis client."""
    key = f"smoke:{RUN}"
    r.set(key, "v", ex=30)
    assert r.get(key) == b"v"
    r.lpush(key + ":q", "task")
    assert r.brpop([key + ":q"], timeout=2) == ((key + ":q").encode(), b"task")
    r.delete(key)


# ------------------------------------------------------------------------------------------ redis
def test_redis_tcp():
    import redis

    r = redis.Redis.from_url(env("REDIS_URL", "redis"), socket_timeout=5)
    roundtrip(r)
    assert r.config_get("appendfsync") == {"appendfsync": "always"}


def test_redis_unix_socket():
    import redis

    path = env("REDIS_SOCKET", "redis")
    assert env("REDIS_SOCKET_URL", "redis") == "redis+socket://" + path
    roundtrip(redis.Redis(unix_socket_path=path, socket_timeout=5))


def test_redis_restart_keeps_queued_item():
    """`scripts/services restart redis` (what the fault tests call) loses no queued message."""
    import redis

    url = env("REDIS_URL", "redis")
    if "redis" not in os.environ.get("MACHINERY_SERVICES", "").split():
        pytest.skip("redis was not started by scripts/services")
    r = redis.Redis.from_url(url, socket_timeout=5)
    queue = f"smoke:{RUN}:durable"
    r.lpush(queue, "queued-before-restart")
    subprocess.run([str(SCRIPT), "restart", "redis"], check=True, timeout=120)
    r = redis.Redis.from_url(url, socket_timeout=5)
    assert r.rpop(queue) == b"queued-before-restart"


def test_redis_tls():
    import redis

    r = redis.Redis.from_url(
        env("REDISS_URL", "redis-tls"),
        ssl_ca_certs=env("REDIS_TLS_CA", "redis-tls"),
        ssl_certfile=env("REDIS_TLS_CERT", "redis-tls"),
        ssl_keyfile=env("REDIS_TLS_KEY", "redis-tls"),
        ssl_check_hostname=True,  # the server certificate names 127.0.0.1 and localhost
        socket_timeout=5,
    )
    roundtrip(r)


def test_redis_cluster():
    from redis.cluster import ClusterNode, RedisCluster

    nodes = hostports(env("REDIS_CLUSTER_NODES", "redis-cluster"))
    assert env("REDIS_CLUSTER_URL", "redis-cluster") == "redis://" + os.environ["REDIS_CLUSTER_NODES"]
    rc = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes], socket_timeout=5)
    try:
        assert len(rc.get_primaries()) == 3
        keys = [f"smoke:{RUN}:{i}" for i in range(20)]
        for i, k in enumerate(keys):
            rc.set(k, i, ex=30)
        assert [int(rc.get(k)) for k in keys] == list(range(20))
        assert len({rc.get_node_from_key(k).name for k in keys}) > 1, "all keys on one node"
        rc.delete(*keys)
    finally:
        rc.close()


def test_redis_sentinel():
    from redis.sentinel import Sentinel

    url = urlsplit(env("REDIS_SENTINEL_URL", "redis-sentinel"))  # redis+sentinel://HOST:PORT/MASTER/DB
    assert url.scheme == "redis+sentinel"
    master_name, db = url.path.strip("/").split("/")
    assert f"{url.hostname}:{url.port}" == env("REDIS_SENTINEL_ADDR", "redis-sentinel")
    sentinel = Sentinel([(url.hostname, url.port)], socket_timeout=5)
    master = sentinel.master_for(master_name, db=int(db))
    roundtrip(master)
    key = f"smoke:{RUN}:replicated"
    master.set(key, "v", ex=30)
    assert master.wait(1, 5000) == 1, "the replica did not acknowledge the write"
    assert sentinel.slave_for(master_name, db=int(db)).get(key) == b"v"


# ------------------------------------------------------------------------------------------ rabbitmq
def test_rabbitmq():
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(env("AMQP_URL", "rabbitmq")))
    try:
        ch = conn.channel()
        queue = f"smoke.{RUN}"
        ch.queue_declare(queue, durable=True)
        ch.confirm_delivery()
        ch.basic_publish("", queue, b'{"task": "add"}', pika.BasicProperties(delivery_mode=2))
        for _ in range(50):
            method, _props, body = ch.basic_get(queue)
            if method:
                break
            time.sleep(0.1)
        assert method and body == b'{"task": "add"}'
        ch.basic_ack(method.delivery_tag)
        ch.queue_delete(queue)
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------ memcached
def test_memcached():
    from pymemcache.client.base import Client
    from pymemcache.client.hash import HashClient

    url = env("MEMCACHE_URL", "memcached")
    assert url.startswith("memcache://")
    servers = hostports(url[len("memcache://") :])
    assert len(servers) == 2
    for server in servers:  # each instance on its own
        c = Client(server, connect_timeout=5, timeout=5)
        assert c.version()
        c.set(f"smoke:{RUN}", b"v", expire=30)
        assert c.get(f"smoke:{RUN}") == b"v"
        c.close()
    hc = HashClient(servers, connect_timeout=5, timeout=5)
    keys = [f"smoke:{RUN}:{i}" for i in range(20)]
    for k in keys:
        hc.set(k, k.encode(), expire=30)
    assert all(hc.get(k) == k.encode() for k in keys)
    hc.delete_many(keys)


# ------------------------------------------------------------------------------------------ aws (moto)
def aws_client(service, endpoint_var):
    import boto3

    return boto3.client(
        service,
        endpoint_url=env(endpoint_var, "aws"),
        region_name=env("AWS_DEFAULT_REGION", "aws"),
        aws_access_key_id=env("AWS_ACCESS_KEY_ID", "aws"),
        aws_secret_access_key=env("AWS_SECRET_ACCESS_KEY", "aws"),
    )


def test_sqs():
    sqs = aws_client("sqs", "SQS_ENDPOINT_URL")
    url = sqs.create_queue(QueueName=f"smoke_{RUN}")["QueueUrl"]
    try:
        sqs.send_message(QueueUrl=url, MessageBody='{"task": "add"}')
        msgs = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5).get("Messages")
        assert msgs and msgs[0]["Body"] == '{"task": "add"}'
        sqs.delete_message(QueueUrl=url, ReceiptHandle=msgs[0]["ReceiptHandle"])
    finally:
        sqs.delete_queue(QueueUrl=url)


def test_dynamodb():
    ddb = aws_client("dynamodb", "DYNAMODB_ENDPOINT_URL")
    table = f"smoke_{RUN}"
    ddb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "TaskUUID", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "TaskUUID", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    try:
        ddb.put_item(TableName=table, Item={"TaskUUID": {"S": "t1"}, "State": {"S": "PENDING"}})
        item = ddb.get_item(TableName=table, Key={"TaskUUID": {"S": "t1"}}, ConsistentRead=True)["Item"]
        assert item["State"]["S"] == "PENDING"
    finally:
        ddb.delete_table(TableName=table)


def test_moto_reset_url():
    import urllib.request

    req = urllib.request.Request(env("MOTO_RESET_URL", "aws"), method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200


# ------------------------------------------------------------------------------------------ mongodb
def test_mongodb():
    import pymongo

    client = pymongo.MongoClient(env("MONGODB_URL", "mongodb"), serverSelectionTimeoutMS=5000)
    db = client[f"smoke_{RUN}"]
    try:
        db.tasks.insert_one({"_id": "t1", "state": "PENDING"})
        assert db.tasks.find_one({"_id": "t1"})["state"] == "PENDING"
        # the TTL sweep runs every second (mongod's: every 60 s)
        db.ttl.create_index("created_at", expireAfterSeconds=1)
        db.ttl.insert_one({"_id": "old", "created_at": datetime.datetime(2000, 1, 1)})
        deadline = time.monotonic() + 10
        while db.ttl.find_one({"_id": "old"}) is not None:
            assert time.monotonic() < deadline, "the TTL sweep did not delete the expired document"
            time.sleep(0.2)
    finally:
        client.drop_database(db.name)
        client.close()


# ------------------------------------------------------------------------------------------ pubsub
def test_pubsub():
    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    if not host:  # optional everywhere: the emulator exists only where the Cloud SDK component is installed
        pytest.skip("PUBSUB_EMULATOR_HOST is not set: the Pub/Sub emulator is not running/available")
    pubsub_v1 = pytest.importorskip("google.cloud.pubsub_v1", reason="google-cloud-pubsub is not installed")
    project = os.environ.get("PUBSUB_PROJECT_ID", "machinery-test")
    pub, sub = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = pub.topic_path(project, f"smoke-{RUN}")
    subscription = sub.subscription_path(project, f"smoke-{RUN}")
    pub.create_topic(name=topic)
    try:
        sub.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=10)
        pub.publish(topic, b'{"task": "add"}').result(timeout=10)
        r = sub.pull(subscription=subscription, max_messages=1, timeout=10)
        assert r.received_messages and r.received_messages[0].message.data == b'{"task": "add"}'
        sub.acknowledge(subscription=subscription, ack_ids=[r.received_messages[0].ack_id])
        sub.delete_subscription(subscription=subscription)
    finally:
        pub.delete_topic(topic=topic)
        sub.close()
