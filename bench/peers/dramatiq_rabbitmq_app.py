"""Dramatiq on RabbitMQ, results in Redis: the peer of Machinery's ``amqp/redis`` row, ``add(x, y)``.

Environment: ``BENCH_AMQP_URL``, ``BENCH_REDIS_URL``, ``BENCH_QUEUE``, ``BENCH_READY_FILE`` (see
dramatiq_app.py). Worker: ``dramatiq bench.peers.dramatiq_rabbitmq_app --processes 1 --threads 8``.
Dramatiq's RabbitMQ broker as shipped: ``confirm_delivery=False`` (a send does not wait for
RabbitMQ's publisher confirm; bench/README.md compares the guarantees).
"""
# mypy: ignore-errors

from __future__ import annotations

import os

from dramatiq.brokers.rabbitmq import RabbitmqBroker

from bench.peers.dramatiq_ready import serve_add

broker = RabbitmqBroker(url=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))
results, add = serve_add(broker)
