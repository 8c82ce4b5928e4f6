"""Dramatiq's side of the peer benchmark: Redis broker, Redis results, ``add(x, y)``.

Environment: ``BENCH_REDIS_URL``, ``BENCH_QUEUE``, and ``BENCH_READY_FILE`` (a file the worker
writes the wall-clock time into once it has booted and consumes). Worker:
``dramatiq bench.peers.dramatiq_app --processes 1 --threads 8``.
"""
# mypy: ignore-errors

from __future__ import annotations

from dramatiq.brokers.redis import RedisBroker

from bench.peers.dramatiq_ready import REDIS_URL, serve_add

broker = RedisBroker(url=REDIS_URL)
results, add = serve_add(broker)
