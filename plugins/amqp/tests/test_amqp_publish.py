"""Publisher confirms: a producer's publish returns before its confirm (the outbox), a worker's waits."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from amqp_apps import make_app
from amqp_testlib import Admin, Names

from machinery import AsyncResult, Config, Signature
from machinery.signature import State
from machinery.task import _current
from machinery_amqp import AMQPBroker, UnroutableError
from machinery_amqp.outbox import Outbox

pytestmark = pytest.mark.services


def sig(n: int) -> Signature:
    return Signature("add", [n, 1], uuid=f"task_{n}")


def test_a_producers_publish_is_confirmed_by_flush(broker: AMQPBroker, names: Names, admin: Admin) -> None:
    broker.publish(sig(0))  # the first to a routing key waits for its confirm (an unroutable one raises)
    assert broker._outbox is None
    for n in range(1, 301):
        broker.publish(sig(n))
    assert broker._outbox is not None  # the rest went through the outbox
    broker.flush(10)
    assert broker._outbox.unconfirmed == 0
    assert admin.count(names.queue) == 301


def test_a_full_outbox_makes_the_sender_wait_for_room(broker: AMQPBroker, names: Names, admin: Admin) -> None:
    """At the limit a send waits for confirms to make room; a batch larger than the limit still goes."""
    broker.publish(sig(0))
    broker._outbox = Outbox(broker._producers, broker._target, limit=10)
    broker.publish_many([sig(n) for n in range(1, 26)])  # 25 > 10: waits for an empty outbox
    for n in range(26, 46):
        broker.publish(sig(n))  # past 10 unconfirmed, each waits for room
        assert broker._outbox.unconfirmed <= 10
    broker.flush(10)
    assert admin.count(names.queue) == 46


def test_unconfirmed_messages_are_sent_again_after_a_broken_connection(
    broker: AMQPBroker, names: Names, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RabbitMQ got the messages but the confirms were lost with the connection: each is sent again
    (at least once: RabbitMQ now holds two copies of each)."""
    drop = {"confirms": True}
    on_confirm = Outbox._on_confirm

    def maybe_drop(self: Outbox[Any], frame: Any) -> None:
        if not drop["confirms"]:
            on_confirm(self, frame)

    monkeypatch.setattr(Outbox, "_on_confirm", maybe_drop)
    broker.publish(sig(0))
    for n in range(1, 51):
        broker.publish(sig(n))
    outbox = broker._outbox
    assert outbox is not None
    deadline = time.monotonic() + 10
    while admin.count(names.queue) != 51 and time.monotonic() < deadline:
        time.sleep(0.05)  # RabbitMQ takes them: no event tells a third party
    assert admin.count(names.queue) == 51
    assert outbox.unconfirmed == 50  # every message reached RabbitMQ, no confirm was taken
    drop["confirms"] = False
    outbox._connection._impl._transport._sock.shutdown(socket.SHUT_RDWR)  # the connection breaks
    broker.flush(30)
    assert admin.count(names.queue) == 101
    uuids = [json.loads(admin.get(names.queue)[2] or b"{}")["UUID"] for _ in range(101)]
    assert sorted(set(uuids)) == sorted(f"task_{n}" for n in range(51))


def test_a_worker_waits_for_each_confirm(broker: AMQPBroker, names: Names, admin: Admin) -> None:
    """Once the broker consumed (a worker), and inside a task anywhere, a publish returns confirmed:
    what a worker sends before acking its source message is in RabbitMQ first."""
    broker.publish(sig(0))
    broker.publish(sig(1))  # deferred: a producer
    [first] = broker.consume(names.queue, 1, 5.0)
    assert broker._outbox is not None and broker._outbox.unconfirmed == 0  # consume() flushed first
    broker.publish(sig(2))
    assert admin.count(names.queue) == 2  # sig(1) and sig(2), no flush needed
    first.ack()


def test_a_send_inside_a_task_waits_for_its_confirm(
    make_config: Callable[..., Config], amqp_url: str, names: Names, admin: Admin
) -> None:
    producer = AMQPBroker(amqp_url, make_config())
    try:
        producer.publish(sig(0))
        token = _current.set(sig(99))  # as in a task run by a worker (also in a pool="process" child)
        try:
            producer.publish(sig(1))
        finally:
            _current.reset(token)
        assert producer._outbox is None
        assert admin.count(names.queue) == 2
    finally:
        producer.close()


def test_wait_for_confirms_setting(make_config: Callable[..., Config], amqp_url: str, admin: Admin) -> None:
    strict = AMQPBroker(amqp_url, make_config(wait_for_confirms=True))
    try:
        for n in range(3):
            strict.publish(sig(n))
        assert strict._outbox is None
    finally:
        strict.close()


def test_an_unroutable_message_in_the_outbox_fails_at_flush(
    make_config: Callable[..., Config], amqp_url: str, names: Names, admin: Admin
) -> None:
    """The binding disappears after the first (confirmed) publish: the outbox declares again and sends
    once more; still unroutable, flush() raises and the error names the routing key."""
    broker = AMQPBroker(amqp_url, make_config(exchange_type="topic", binding_key=names.binding_key))
    try:
        broker.publish(Signature("add", [1], routing_key=names.binding_key))
        admin._ch().queue_unbind(names.binding_key, names.exchange, routing_key=names.binding_key)
        admin._ch().queue_delete(names.binding_key)
        broker._routed.add("elsewhere")
        broker.publish(Signature("add", [2], routing_key="elsewhere"))  # bound by nothing
        with pytest.raises(UnroutableError, match="elsewhere"):
            broker.flush(10)
    finally:
        broker.close()


def test_a_producer_app_stores_pending_then_publishes(amqp_url: str, names: Names, admin: Admin) -> None:
    """send_task of a producer hands PENDING and the message to the outbox; close() waits for both."""
    producer = make_app(amqp_url, amqp_url, names.suffix)
    uuids = [producer.send_task(producer.tasks["add"].s(n, 1)).uuid for n in range(20)]
    assert producer.broker._outbox is not None  # type: ignore[attr-defined]
    producer.close()
    assert admin.count(names.queue) == 20
    worker_app = make_app(amqp_url, amqp_url, names.suffix)
    assert [AsyncResult(worker_app.backend, u).state for u in uuids] == [State.PENDING] * 20
    assert all(AsyncResult(worker_app.backend, u).task_state is not None for u in uuids)  # stored
    worker = worker_app.worker(concurrency=4)
    thread = worker.launch_async()
    try:
        results = [AsyncResult(worker_app.backend, u) for u in uuids]
        assert [r.get(timeout=15) for r in results] == [n + 1 for n in range(20)]
        assert all(r.state == State.SUCCESS for r in results)
    finally:
        worker.quit()
        thread.join(15)
        worker_app.close()


def test_messages_published_before_exit_are_confirmed_at_exit(
    amqp_url: str, names: Names, admin: Admin, tmp_path: Path
) -> None:
    """An app that is never closed: interpreter exit waits for the outbox."""
    script = tmp_path / "produce.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from machinery import Config, Signature
            from machinery_amqp import AMQPBroker
            config = Config(default_queue={names.queue!r})
            config.amqp.exchange = {names.exchange!r}
            config.amqp.binding_key = {names.binding_key!r}
            broker = AMQPBroker({amqp_url!r}, config)
            for n in range(500):
                broker.publish(Signature("add", [n]))
            """
        )
    )
    subprocess.run([sys.executable, str(script)], check=True, timeout=60)
    assert admin.count(names.queue) == 500
