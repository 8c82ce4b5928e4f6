"""The AMQP broker against a real RabbitMQ: topology, publish/consume/ack, prefetch, delays, priority."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pika
import pytest
from amqp_testlib import Admin, Names

from machinery import Config, Signature
from machinery.capabilities import Capability
from machinery_amqp import AMQPBroker, AMQPError, UnroutableError
from machinery_amqp.broker import QUORUM_DELAY_ARGS

pytestmark = pytest.mark.services


def sig(n: int, **kw: object) -> Signature:
    return Signature("add", [n, 1], uuid=f"task_{n}", **kw)  # type: ignore[arg-type]


def take(broker: AMQPBroker, queue: str, count: int, timeout: float = 5.0) -> list:  # type: ignore[type-arg]
    """Consume until ``count`` deliveries arrived (each call asks for the rest)."""
    got: list = []  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += broker.consume(queue, count - len(got), 0.5)
    return got


def test_publish_consume_ack_in_order(broker: AMQPBroker, names: Names, admin: Admin) -> None:
    for n in range(5):
        broker.publish(sig(n))
    broker.flush()  # a producer's publish returns before its confirm: flush waits for them
    assert admin.count(names.queue) == 5
    got = take(broker, names.queue, 5)
    assert [d.signature.uuid for d in got] == [f"task_{n}" for n in range(5)]
    assert not any(d.redelivered for d in got)
    for d in got:
        d.ack()
    assert broker.consume(names.queue, 5, 0.3) == []
    assert admin.count(names.queue) == 0


def test_wire_format_is_go_machinery(broker: AMQPBroker, names: Names, admin: Admin) -> None:
    """Default direct exchange: routing key = binding key, JSON body, persistent, headers, priority."""
    broker.publish(sig(1, headers={"trace": "abc", "n": 2}))
    method, props, body = admin.get(names.queue)
    assert method.exchange == names.exchange  # type: ignore[attr-defined]
    assert method.routing_key == names.binding_key  # type: ignore[attr-defined]
    assert props.content_type == "application/json"  # type: ignore[attr-defined]
    assert props.delivery_mode == 2  # type: ignore[attr-defined]
    assert props.headers == {"trace": "abc", "n": 2}  # type: ignore[attr-defined]
    assert props.priority == 0  # type: ignore[attr-defined]
    data = json.loads(body or b"")
    assert data["UUID"] == "task_1" and data["Name"] == "add"
    assert data["Args"] == [
        {"Name": "", "Type": "int64", "Value": 1},
        {"Name": "", "Type": "int64", "Value": 1},
    ]


def test_no_stray_queue_named_after_the_routing_key(broker: AMQPBroker, names: Names, admin: Admin) -> None:
    """Go's direct-exchange producer declared a second queue named after the binding key (#484)."""
    broker.publish(sig(1))
    assert admin.exists(names.queue)
    assert not admin.exists(names.binding_key)
    # a Go message whose RoutingKey is the binding key is routed to the default queue too
    assert broker.route(names.binding_key) == (names.queue, names.binding_key)


def test_published_before_any_worker_is_kept(
    amqp_url: str, config: Config, names: Names, admin: Admin
) -> None:
    producer = AMQPBroker(amqp_url, config)
    producer.publish(sig(7))
    producer.close()
    consumer = AMQPBroker(amqp_url, config)
    try:
        [d] = take(consumer, names.queue, 1)
        assert d.signature.uuid == "task_7"
        d.ack()
    finally:
        consumer.close()


def test_custom_queue_routing(broker: AMQPBroker, names: Names, admin: Admin) -> None:
    other = names.other("other")
    admin.queues.add(other)
    broker.publish(sig(1, routing_key=other))
    broker.publish(sig(2))
    assert admin.count(other) == 1
    assert admin.count(names.queue) == 1
    [d] = take(broker, other, 1)
    assert d.signature.uuid == "task_1"
    d.ack()


def test_nack_requeue_comes_back_redelivered(broker: AMQPBroker, names: Names) -> None:
    broker.publish(sig(1))
    [d] = take(broker, names.queue, 1)
    d.nack(requeue=True)
    [again] = take(broker, names.queue, 1)
    assert again.signature.uuid == "task_1"
    assert again.redelivered
    again.ack()


def test_nack_with_delay_is_not_early(broker: AMQPBroker, names: Names) -> None:
    broker.publish(sig(1))
    [d] = take(broker, names.queue, 1)
    start = time.monotonic()
    d.nack(requeue=True, delay=1.0)
    assert broker.consume(names.queue, 1, 0.7) == []
    [again] = take(broker, names.queue, 1)
    assert time.monotonic() - start >= 1.0
    assert again.signature.uuid == "task_1"
    again.ack()


def test_nack_without_requeue_dead_letters(broker: AMQPBroker, names: Names, admin: Admin) -> None:
    broker.publish(sig(1))
    [d] = take(broker, names.queue, 1)
    d.nack(requeue=False, reason="poison")
    assert broker.consume(names.queue, 1, 0.3) == []
    [dead] = broker.dead_letters(names.queue)
    assert json.loads(dead.body)["UUID"] == "task_1"
    assert (dead.reason, dead.queue, dead.delivery_count) == ("poison", names.queue, 1)
    assert abs((datetime.now(UTC) - dead.time).total_seconds()) < 60
    assert admin.count(names.queue + ".dead") == 1  # dead_letters() leaves it there


def test_settling_twice_is_ignored(broker: AMQPBroker, names: Names) -> None:
    broker.publish(sig(1))
    [d] = take(broker, names.queue, 1)
    d.ack()
    d.ack()
    d.nack()
    assert broker.consume(names.queue, 1, 0.3) == []


def test_malformed_body_is_a_delivery_with_an_error(broker: AMQPBroker, names: Names) -> None:
    broker.publish_raw(names.queue, b"{not json")
    broker.publish_raw(names.queue, b'{"UUID": "task_x", "Name": 5}')
    got = take(broker, names.queue, 2)
    assert [d.signature for d in got] == [None, None]
    assert all(d.error for d in got)
    assert got[0].body == b"{not json"
    for d in got:
        d.nack(requeue=False)
    assert len(broker.dead_letters(names.queue)) == 2


def test_never_more_than_max_messages_and_prefetch_bound(
    broker: AMQPBroker, names: Names, admin: Admin
) -> None:
    """Each consume hands out at most max_messages, and RabbitMQ sends this process only as many
    messages as the worker has slots for (prefetch = unsettled + free slots)."""
    for n in range(10):
        broker.publish(sig(n))
    first = take(broker, names.queue, 3)  # a worker with 3 free slots
    assert len(first) == 3
    time.sleep(0.3)
    assert admin.count(names.queue) == 7  # nothing beyond the 3 slots left the server
    assert broker.consume(names.queue, 0, 0.1) == []
    for d in first:
        d.ack()
    second = broker.consume(names.queue, 2, 2.0)
    assert 1 <= len(second) <= 2
    for d in second:
        d.ack()


def test_prefetch_count_caps_the_prefetch(
    make_config: Callable[..., Config], amqp_url: str, names: Names, admin: Admin
) -> None:
    broker = AMQPBroker(amqp_url, make_config(prefetch_count=2))
    try:
        for n in range(6):
            broker.publish(sig(n))
        got = take(broker, names.queue, 5, timeout=1.5)
        assert len(got) == 2  # prefetch_count 2 < 5 free slots
        time.sleep(0.2)
        assert admin.count(names.queue) == 4
        for d in got:
            d.ack()
        rest = []
        for _ in range(2):
            batch = take(broker, names.queue, 2)
            for d in batch:
                d.ack()
            rest += batch
        assert [d.signature.uuid for d in rest] == [f"task_{n}" for n in range(2, 6)]
    finally:
        broker.close()


def test_idle_consumer_releases_its_prefetch(
    broker: AMQPBroker, names: Names, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    from machinery_amqp import broker as broker_mod

    monkeypatch.setattr(broker_mod, "IDLE_RELEASE", 0.5)
    for n in range(4):
        broker.publish(sig(n))
    [d] = broker.consume(names.queue, 1, 2.0)
    # now ask for 4 (prefetch grows to 5), take nothing more and go idle
    assert len(take(broker, names.queue, 3)) == 3
    time.sleep(0.1)
    for _ in range(40):
        if admin.count(names.queue) == 0:
            break
        time.sleep(0.05)
    d.ack()


def test_eta_not_early_and_priority_kept_through_the_delay(
    make_config: Callable[..., Config], amqp_url: str, names: Names, admin: Admin
) -> None:
    """#824: a delayed message keeps its priority property through the delay."""
    broker = AMQPBroker(amqp_url, make_config(queue_declare_args={"x-max-priority": 10}))
    assert Capability.PRIORITY in broker.capabilities
    try:
        eta = datetime.now(UTC) + timedelta(seconds=1.5)
        broker.publish(sig(1, eta=eta, priority=1))
        broker.publish(sig(2, eta=eta, priority=9))
        broker.publish(sig(3, eta=eta, priority=5))
        time.sleep(1.0)
        assert admin.count(names.queue) == 0  # still in their delay queues: not early
        deadline = time.monotonic() + 4.0  # all three in the task queue (a quorum delay queue may be
        while admin.count(names.queue) != 3 and time.monotonic() < deadline:  # ~0.5 s late), then take
            time.sleep(0.05)
        assert datetime.now(UTC) >= eta
        got = take(broker, names.queue, 3)
        assert [d.signature.uuid for d in got] == ["task_2", "task_3", "task_1"]
        assert [d._properties.priority for d in got] == [9, 5, 1]
        for d in got:
            d.ack()
    finally:
        broker.close()


def test_priority_without_delay(
    make_config: Callable[..., Config], amqp_url: str, names: Names, admin: Admin
) -> None:
    broker = AMQPBroker(amqp_url, make_config(queue_declare_args={"x-max-priority": 10}, prefetch_count=1))
    try:
        for n, priority in ((1, 0), (2, 9), (3, 4)):
            broker.publish(sig(n, priority=priority))
        order = []
        for _ in range(3):
            [d] = take(broker, names.queue, 1)
            order.append(d.signature.uuid)
            d.ack()
        assert order == ["task_2", "task_3", "task_1"]
    finally:
        broker.close()


def test_fixed_delayed_queue_mode(
    make_config: Callable[..., Config], amqp_url: str, names: Names, admin: Admin
) -> None:
    delayed = names.other("delayed")
    admin.queues.add(delayed)
    broker = AMQPBroker(amqp_url, make_config(delayed_queue=delayed))
    try:
        start = time.monotonic()
        broker.publish(sig(1, eta=datetime.now(UTC) + timedelta(seconds=0.8)))
        broker.flush()
        assert admin.count(delayed) == 1
        [d] = take(broker, names.queue, 1)
        assert time.monotonic() - start >= 0.75
        d.ack()
    finally:
        broker.close()


def test_unroutable_publish_raises(
    make_config: Callable[..., Config], amqp_url: str, names: Names, admin: Admin
) -> None:
    """A topic exchange whose binding key matches no routing key: RabbitMQ returns the message."""
    broker = AMQPBroker(amqp_url, make_config(exchange_type="topic", binding_key="nothing.matches.this"))
    try:
        with pytest.raises(UnroutableError, match="unroutable"):
            broker.publish(sig(1))
        assert admin.count(names.queue) == 0
    finally:
        broker.close()


def test_pending_in_order_and_purge(broker: AMQPBroker, names: Names, admin: Admin) -> None:
    for n in (1, 3, 6):
        broker.publish(sig(n))
    pending = broker.pending(names.queue)
    assert [s.uuid for s in pending] == ["task_1", "task_3", "task_6"]
    assert [s.arg_values for s in pending] == [[1, 1], [3, 1], [6, 1]]
    assert admin.count(names.queue) == 3  # left in place
    assert [s.uuid for s in broker.pending(names.queue)] == ["task_1", "task_3", "task_6"]
    broker.purge(names.queue)
    assert broker.pending(names.queue) == []
    assert broker.pending(names.other("never_declared")) == []
    broker.purge(names.other("never_declared"))


def test_publish_many(broker: AMQPBroker, names: Names, admin: Admin) -> None:
    broker.publish_many([sig(n) for n in range(20)])
    assert admin.count(names.queue) == 20
    broker.publish_many([sig(n) for n in range(20, 50)])  # the same link: confirms numbered on from 21
    assert [s.uuid for s in broker.pending(names.queue)] == [f"task_{n}" for n in range(50)]


def test_publish_many_after_its_queue_was_deleted(broker: AMQPBroker, names: Names, admin: Admin) -> None:
    """Every message of the batch comes back unroutable (the link thinks the queue is declared): they
    are sent again after declaring it, none lost or doubled."""
    broker.publish_many([sig(n) for n in range(3)])
    admin._ch().queue_delete(names.queue)
    broker.publish_many([sig(n) for n in range(3, 8)])
    assert [s.uuid for s in broker.pending(names.queue)] == [f"task_{n}" for n in range(3, 8)]


def test_publish_many_with_delays(broker: AMQPBroker, names: Names, admin: Admin) -> None:
    """A batch mixing delayed and immediate messages: each goes where it should, confirmed."""
    later = datetime.now(UTC) + timedelta(seconds=0.5)
    broker.publish_many([sig(1), sig(2, eta=later), sig(3)])
    assert [s.uuid for s in broker.pending(names.queue)] == ["task_1", "task_3"]
    got = take(broker, names.queue, 3)
    assert sorted(d.signature.uuid for d in got) == ["task_1", "task_2", "task_3"]
    for d in got:
        d.ack()


def test_unroutable_publish_many_raises(
    make_config: Callable[..., Config], amqp_url: str, names: Names, admin: Admin
) -> None:
    broker = AMQPBroker(amqp_url, make_config(exchange_type="topic", binding_key="nothing.matches.this"))
    try:
        with pytest.raises(UnroutableError, match="unroutable"):
            broker.publish_many([sig(n) for n in range(3)])
        assert admin.count(names.queue) == 0
    finally:
        broker.close()


def test_two_consumers_share_a_queue(amqp_url: str, config: Config, names: Names, admin: Admin) -> None:
    a, b = AMQPBroker(amqp_url, config), AMQPBroker(amqp_url, config)
    try:
        a.publish_many([sig(n) for n in range(6)])
        got_a = take(a, names.queue, 3)
        got_b = take(b, names.queue, 3)
        uuids = sorted(d.signature.uuid for d in got_a + got_b)
        assert uuids == sorted(f"task_{n}" for n in range(6))
        for d in got_a + got_b:
            d.ack()
    finally:
        a.close()
        b.close()


def test_ack_many_acks_each_once(amqp_url: str, config: Config, names: Names, admin: Admin) -> None:
    """``ack_many`` (the worker's batched acks): every delivery acked, the ones already settled skipped,
    a delivery of another broker acked by itself; nothing comes back after a reconnect."""
    a, b = AMQPBroker(amqp_url, config), AMQPBroker(amqp_url, config)
    try:
        a.publish_many([sig(n) for n in range(5)])
        got = take(a, names.queue, 4)
        [other] = take(b, names.queue, 1)
        got[0].ack()  # settled before: ack_many must not ack its tag twice (a channel error)
        a.ack_many([*got, other])
        assert all(d.settled for d in [*got, other])
    finally:
        a.close()
        b.close()
    c = AMQPBroker(amqp_url, config)
    try:
        assert take(c, names.queue, 1, timeout=0.5) == [], "an acked message came back"
        assert admin.count(names.queue) == 0
    finally:
        c.close()


def test_close_returns_unacked_messages(amqp_url: str, config: Config, names: Names, admin: Admin) -> None:
    a = AMQPBroker(amqp_url, config)
    a.publish_many([sig(n) for n in range(3)])
    got = take(a, names.queue, 3)
    assert len(got) == 3
    a.close()
    a.close()  # idempotent
    b = AMQPBroker(amqp_url, config)
    try:
        again = take(b, names.queue, 3)
        assert sorted(d.signature.uuid for d in again) == ["task_0", "task_1", "task_2"]
        assert all(d.redelivered for d in again)
        for d in again:
            d.ack()
        got[0].ack()  # an ack after close is ignored, not an error
    finally:
        b.close()


def test_ack_from_a_dead_connection_is_dropped_and_the_message_redelivered(
    broker: AMQPBroker, names: Names, admin: Admin
) -> None:
    """Delivery tags belong to a channel: after a drop, the old ack must not reach the new channel."""
    import socket

    broker.publish(sig(1))
    [old] = take(broker, names.queue, 1)
    consumer = broker._consumer
    assert consumer is not None and consumer.connection is not None
    sock = consumer.connection._impl._transport._sock  # type: ignore[union-attr]
    sock.shutdown(socket.SHUT_RDWR)  # the TCP connection drops under the consumer
    [again] = take(broker, names.queue, 1, timeout=15)
    assert again.signature.uuid == "task_1" and again.redelivered
    old.ack()  # dropped: its channel is gone (same tag number as `again` on the new channel!)
    again.nack(requeue=True)  # had old.ack() reached the new channel, the message would be gone
    [third] = take(broker, names.queue, 1)
    assert third.signature.uuid == "task_1"
    third.ack()
    assert broker.consume(names.queue, 1, 0.3) == []
    assert admin.count(names.queue) == 0


def test_queue_declared_with_other_arguments_is_a_clear_error(
    make_config: Callable[..., Config], amqp_url: str, broker: AMQPBroker, names: Names, admin: Admin
) -> None:
    broker.publish(sig(1))  # the queue exists without x-max-priority
    other = AMQPBroker(amqp_url, make_config(queue_declare_args={"x-max-priority": 10}))
    try:
        with pytest.raises(AMQPError, match="x-max-priority"):
            for _ in range(10):
                other.consume(names.queue, 1, 0.5)
        with pytest.raises(AMQPError, match="PRECONDITION_FAILED"):
            other.publish(sig(2))
    finally:
        other.close()
    [d] = take(broker, names.queue, 1)  # the first broker is unaffected
    d.ack()


def test_consumer_survives_its_queue_being_deleted(broker: AMQPBroker, names: Names, admin: Admin) -> None:
    broker.publish(sig(1))
    [d] = take(broker, names.queue, 1)
    d.ack()
    admin.channel.queue_delete(names.queue)  # RabbitMQ cancels the consumer
    time.sleep(0.3)
    broker.publish(sig(2))  # the producer declares it again
    got: list = []  # type: ignore[type-arg]
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        with contextlib.suppress(AMQPError):
            got = broker.consume(names.queue, 1, 0.5)
    assert [x.signature.uuid for x in got] == ["task_2"]
    got[0].ack()


def test_quorum_queue_counts_redeliveries_and_a_delayed_requeue_starts_afresh(
    make_config: Callable[..., Config], amqp_url: str, names: Names, admin: Admin
) -> None:
    """A quorum queue's x-delivery-count becomes ``delivery_count``; a copy sent round through a delay
    queue (a planned hop) does not inherit it."""
    broker = AMQPBroker(amqp_url, make_config(queue_declare_args={"x-queue-type": "quorum"}))
    try:
        broker.publish(sig(1))
        [first] = take(broker, names.queue, 1)
        assert (first.delivery_count, first.redelivered) == (1, False)
        first.nack(requeue=True)
        [again] = take(broker, names.queue, 1)
        assert (again.delivery_count, again.redelivered) == (2, True)
        again.nack(requeue=True, delay=0.2)
        [copy] = take(broker, names.queue, 1)
        assert (copy.delivery_count, copy.redelivered) == (1, False)
        assert "x-delivery-count" not in (copy._properties.headers or {})
        copy.ack()
    finally:
        broker.close()


def test_delay_queues_are_quorum_queues_that_dead_letter_at_least_once(
    broker: AMQPBroker, names: Names, admin: Admin
) -> None:
    """A classic queue dead-letters at most once (a message due while RabbitMQ stops its queues may be
    dropped), so the automatic delay queue is a quorum queue that dead-letters at least once."""
    # 30,000 ms rounded up to 64 steps per doubling (a step is 256 ms here): fewer queues. RabbitMQ
    # 3.10 expires a quorum queue counting from its creation, so each 10-min window has its own.
    windows = {int(time.time() // 600)}
    broker.publish_raw(names.queue, b"{}", delay=30.0)
    broker.flush()  # a producer's publish returns before its confirm
    windows.add(int(time.time() // 600))
    [name] = [
        n
        for w in windows
        if admin.exists(n := f"delay.30208.{names.exchange}.{names.binding_key}.quorum.{w}")
    ]
    admin.queues.add(name)
    assert admin.count(name) == 1 and admin.count(names.queue) == 0
    args = {
        "x-dead-letter-exchange": names.exchange,
        "x-dead-letter-routing-key": names.binding_key,
        "x-message-ttl": 30208,
        # its window, then its delay, then 10 min for its dead letters to get out (after a restart)
        "x-expires": 600_000 + 30208 + 600_000,
    }
    ch = admin._ch()
    ch.queue_declare(name, durable=True, arguments={**args, **QUORUM_DELAY_ARGS})  # the same: accepted
    with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="x-dead-letter-strategy"):
        ch.queue_declare(name, durable=True, arguments={**args, "x-queue-type": "quorum"})


def test_auto_delete_keeps_gos_classic_delay_queues(
    make_config: Callable[..., Config], amqp_url: str, names: Names, admin: Admin
) -> None:
    """``auto_delete`` is a classic-only property: Go's classic delay queue (at-most-once)."""
    broker = AMQPBroker(amqp_url, make_config(auto_delete=True))
    try:
        broker.publish_raw(names.queue, b"{}", delay=30.0)
        broker.flush()
        name = f"delay.30000.{names.exchange}.{names.binding_key}"
        admin.queues.add(name)
        assert admin.count(name) == 1 and not admin.exists(name + ".quorum")
    finally:
        broker.close()
