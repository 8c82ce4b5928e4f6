"""Dramatiq on RabbitMQ, results in Redis: the peer of Machinery's ``amqp/redis`` row, ``add(x, y)``.

Environment: ``BENCH_AMQP_URL``, ``BENCH_REDIS_URL``, ``BENCH_QUEUE``, ``BENCH_READY_FILE`` (see
dramatiq_app.py). Worker: ``dramatiq bench.peers.dramatiq_rabbitmq_app --processes 1 --threads 8``.
Dramatiq's RabbitMQ broker as shipped: ``confirm_delivery=False`` (a send does not wait for
RabbitMQ's publisher confirm; bench/README.md compares the guarantees).
"""
# mypy: ignore-errors

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from bench.peers.dramatiq_ready import Ready

AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("BENCH_QUEUE", "bench")

results = RedisBackend(url=URL)
broker = RabbitmqBroker(url=AMQP_URL)
broker.add_middleware(Results(backend=results))
broker.add_middleware(Ready())
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True, queue_name=QUEUE, max_retries=0)
def add(x, y):
    return x + y
