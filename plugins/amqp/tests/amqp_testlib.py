"""Helpers and fixtures for the machinery-amqp tests: a real RabbitMQ from ``scripts/services``.

``AMQP_URL`` comes from ``eval "$(scripts/services env)"``. Without it the server tests skip, and fail
when ``CI=true``. Every test gets its own exchange, binding key and queues (``names``) and deletes them
afterwards, so tests never see each other's messages.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pika
import pytest

from machinery import Config
from machinery.testing import require_env
from machinery_amqp import AMQPBackend, AMQPBroker

REPO = Path(__file__).resolve().parents[3]
SERVICES = REPO / "scripts" / "services"


def amqp_url_or_skip() -> str:
    return require_env("AMQP_URL", "rabbitmq")


@pytest.fixture(scope="session")
def amqp_url() -> str:
    return amqp_url_or_skip()


@dataclass
class Names:
    """Names private to one test."""

    suffix: str

    @property
    def exchange(self) -> str:
        return f"mx_{self.suffix}"

    @property
    def binding_key(self) -> str:
        return f"mk_{self.suffix}"

    @property
    def queue(self) -> str:
        return f"mq_{self.suffix}"

    def other(self, name: str) -> str:
        return f"{name}_{self.suffix}"


@pytest.fixture
def names() -> Names:
    return Names(uuid.uuid4().hex[:10])


@pytest.fixture
def make_config(names: Names) -> Callable[..., Config]:
    def make(**amqp: object) -> Config:
        config = Config(default_queue=names.queue, results_expire_in=120)
        config.amqp.exchange = names.exchange
        config.amqp.binding_key = names.binding_key
        config.amqp.prefetch_count = 0
        for key, value in amqp.items():
            setattr(config.amqp, key, value)
        config.worker.shutdown_grace = 5.0
        return config

    return make


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config()


class Admin:
    """Raw pika access for assertions the broker API does not offer (counts, raw messages)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.queues: set[str] = set()
        self.exchanges: set[str] = set()

    def _ch(self) -> pika.adapters.blocking_connection.BlockingChannel:
        if not self.connection.is_open:
            self.connection = pika.BlockingConnection(pika.URLParameters(self.url))
        if not self.channel.is_open:
            self.channel = self.connection.channel()
        return self.channel

    def count(self, queue: str) -> int | None:
        """Ready messages of ``queue``; None when it does not exist."""
        try:
            return self._ch().queue_declare(queue, passive=True).method.message_count or 0
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return None
            raise

    def exists(self, queue: str) -> bool:
        return self.count(queue) is not None

    def get(self, queue: str) -> tuple[object, object, bytes | None]:
        return self._ch().basic_get(queue, auto_ack=True)

    def cleanup(self) -> None:
        for queue in self.queues:
            with contextlib.suppress(Exception):
                self._ch().queue_delete(queue)
        for exchange in self.exchanges:
            with contextlib.suppress(Exception):
                self._ch().exchange_delete(exchange)
        self.connection.close()


@pytest.fixture
def admin(amqp_url: str, names: Names, config: Config) -> Iterator[Admin]:
    a = Admin(amqp_url)
    a.queues |= {names.queue, names.queue + ".dead", names.binding_key}
    a.exchanges |= {names.exchange, names.exchange + ".results"}
    yield a
    a.cleanup()


@pytest.fixture
def broker(amqp_url: str, config: Config, admin: Admin) -> Iterator[AMQPBroker]:
    b = AMQPBroker(amqp_url, config)
    yield b
    b.close()


@pytest.fixture
def backend(amqp_url: str, config: Config, admin: Admin) -> Iterator[AMQPBackend]:
    b = AMQPBackend(amqp_url, config)
    yield b
    b.close()
