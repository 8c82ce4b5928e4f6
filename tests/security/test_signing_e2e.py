"""Signed messages end to end on the real brokers (sqlite, Redis, RabbitMQ): a worker with keys runs what
its app sends, chains whose callbacks it publishes itself, delayed tasks (the broker's ETA path) and
retries; it dead-letters a forged message without running it or touching the real task's state."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from machinery import Config, Machinery, Signature, State
from machinery.signature import Arg, now_utc
from machinery.testing import require_env
from machinery.worker import Worker

pytestmark = pytest.mark.services  # real Redis and RabbitMQ from scripts/services

KEYS = ["e2e-signing-key-new-0123456789", "e2e-signing-key-old-0123456789"]


def _sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/signed.db"


def _redis(tmp_path: Path) -> str:
    return require_env("REDIS_URL", "redis")


def _amqp(tmp_path: Path) -> str:
    return require_env("AMQP_URL", "rabbitmq")


class _Rejections(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []
        self.cond = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.cond:
            self.lines.append(record.getMessage())
            self.cond.notify_all()

    def wait_for(self, text: str) -> str:
        with self.cond:
            found = self.cond.wait_for(lambda: [line for line in self.lines if text in line], 15)
        assert found, f"no rejection logged for {text!r}: {self.lines}"
        return found[0]


@pytest.fixture(params=[_sqlite, _redis, _amqp], ids=["sqlite", "redis", "amqp"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Machinery]:
    make_url: Callable[[Path], str] = request.param
    url = make_url(tmp_path)
    config = Config(broker=url, result_backend=url, signing_keys=KEYS)
    config.default_queue = f"machinery_signed_{uuid.uuid4().hex[:8]}"
    config.worker.poll_timeout = 0.2
    config.worker.shutdown_grace = 5
    application = Machinery(config)
    yield application
    application.broker.purge(config.default_queue)
    application.close()


@pytest.fixture
def rejections() -> Iterator[_Rejections]:
    handler = _Rejections()
    logger = logging.getLogger("machinery.signing")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture
def runs(app: Machinery) -> Iterator[list[Any]]:
    calls: list[Any] = []
    attempts: list[int] = []

    @app.task
    def add(a: int, b: int) -> int:
        calls.append((a, b))
        return a + b

    @app.task
    def flaky() -> int:
        attempts.append(1)
        if len(attempts) < 2:
            raise ValueError("once more")
        return len(attempts)

    worker: Worker = app.worker("signed-e2e", concurrency=2)
    thread = worker.launch_async()
    yield calls
    worker.quit()
    thread.join(15)


def _body_of(letter: Any) -> bytes:
    return bytes(letter if isinstance(letter, bytes | bytearray) else letter.body)


def test_signed_work_runs_and_a_forgery_is_dead_lettered(
    app: Machinery, runs: list[Any], rejections: _Rejections
) -> None:
    first = Signature("add", args=[Arg(1, "int64"), Arg(2, "int64")])
    soon = now_utc() + timedelta(seconds=0.3)
    later = Signature("add", args=[Arg(20, "int64"), Arg(22, "int64")], eta=soon)
    delayed = app.send_task(later)  # through the broker's delayed-message path
    chain = app.send_chain([first, Signature("add", args=[Arg(10, "int64")])])
    assert delayed.get(timeout=20) == 42
    assert chain.get(timeout=20) == 13
    assert app.send_task(Signature("flaky", retry_count=2)).get(timeout=20) == 2

    forged = Signature("add", uuid=delayed.uuid, args=[Arg(666, "int64"), Arg(0, "int64")])
    forged.routing_key = app.config.default_queue
    app.broker.publish(forged)  # straight onto the queue, without a signature
    line = rejections.wait_for(f"uuid {delayed.uuid!r}")
    assert "unsigned" in line
    assert (666, 0) not in runs
    state = app.backend.get_state(delayed.uuid)
    assert state is not None and state.state is State.SUCCESS and delayed.get(timeout=1) == 42
    dead_letters = getattr(app.broker, "dead_letters", None)
    if dead_letters is not None:  # sqlite and RabbitMQ keep them; Redis drops them
        deadline = time.monotonic() + 10  # the log line comes just before the nack: poll briefly
        while not any(delayed.uuid.encode() in _body_of(x) for x in dead_letters(app.config.default_queue)):
            assert time.monotonic() < deadline, "the forged message is not in the dead-letter store"
            time.sleep(0.02)
