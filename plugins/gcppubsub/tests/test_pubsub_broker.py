"""Pub/Sub specifics on the emulator: ETA holds and hops, no slot held while waiting, dead letters,
ordering keys, size and naming errors, an unreachable endpoint."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from gcppubsub_testlib import pubsub_url_for

from machinery import Config, Machinery, Signature
from machinery.errors import BrokerError
from machinery.signature import now_utc
from machinery_gcppubsub.broker import MAX_MESSAGE_BYTES, PubSubBroker, PubSubDelivery

pytestmark = pytest.mark.services


def fresh(name: str = "q") -> str:
    return f"{name}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def config() -> Config:
    return Config(default_queue=fresh("tasks"))


def make(config: Config, **options: object) -> PubSubBroker:
    return PubSubBroker.from_url(pubsub_url_for(fresh("sub"), **options), config)


@pytest.fixture
def broker(config: Config) -> Iterator[PubSubBroker]:
    broker = make(config)
    yield broker
    broker.close()


def consume_until(broker: PubSubBroker, queue: str, count: int, timeout: float) -> list[PubSubDelivery]:
    got: list[PubSubDelivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got.extend(broker.consume(queue, count - len(got), 0.5))  # type: ignore[arg-type]
    return got


def test_eta_past_the_hold_window_hops_as_a_fresh_message_and_is_never_early(config: Config) -> None:
    broker = make(config, hold_window=1)
    queue = fresh()
    sent_at = now_utc()
    eta = sent_at + timedelta(seconds=3.5)
    sig = Signature("later", uuid=fresh("t"), routing_key=queue, eta=eta)
    broker.publish(sig)
    got = consume_until(broker, queue, 1, 12)
    arrived = now_utc()
    assert [d.signature.uuid for d in got if d.signature] == [sig.uuid], "the ETA message never arrived"
    assert arrived >= eta, f"the ETA message ran {(eta - arrived).total_seconds():.2f}s early"
    assert (arrived - eta).total_seconds() < 2.5, "the ETA message arrived more than 2.5 s late"
    delivery = got[0]
    assert delivery.published_at > sent_at + timedelta(seconds=0.9), "it was not published again (a hop)"
    assert delivery.delivery_count == 1 and not delivery.redelivered, "a hop must not count as a delivery"
    delivery.ack()
    broker.close()


def test_a_waiting_eta_task_holds_no_worker_slot(config: Config, tmp_path: object) -> None:
    url = pubsub_url_for(fresh("sub"))
    app = Machinery(Config(broker=url, result_backend="memory://", default_queue=config.default_queue))

    @app.task
    def add(*args: int) -> int:
        return sum(args)

    worker = app.worker(concurrency=1)
    worker.launch_async()
    try:
        eta = now_utc() + timedelta(seconds=5)
        later = app.send_task(add.s(100, 1).set(eta=eta))
        quick = [app.send_task(add.s(i, i)) for i in range(5)]
        assert [r.get(timeout=4) for r in quick] == [0, 2, 4, 6, 8], "quick tasks waited behind an ETA task"
        assert now_utc() < eta, "too slow to tell: the quick tasks finished after the ETA"
        assert later.get(timeout=10) == 101
        assert now_utc() >= eta
    finally:
        worker.quit()
        app.close()


def test_dead_letter_keeps_the_body_and_the_reason(broker: PubSubBroker) -> None:
    queue = fresh()
    sig = Signature("doomed", uuid=fresh("t"), routing_key=queue)
    broker.publish(sig)
    got = consume_until(broker, queue, 1, 5)
    got[0].nack(requeue=False, reason="poison: unreadable arguments")
    assert broker.consume(queue, 1, 1.0) == []
    letters = broker.dead_letters(queue)
    assert [(x.body, x.reason, x.queue) for x in letters] == [
        (got[0].body, "poison: unreadable arguments", queue)
    ]
    assert broker.dead_letters(queue), "peeking must leave the dead letters in place"


def test_ordering_key_keeps_a_group_in_order(config: Config) -> None:
    broker = make(config, message_ordering="true")
    queue = fresh()
    sigs = [
        Signature("step", uuid=fresh("t"), routing_key=queue, broker_message_group_id="order-42")
        for _ in range(6)
    ]
    broker.publish_many(sigs)
    got = consume_until(broker, queue, 6, 10)
    assert [d.signature.uuid for d in got if d.signature] == [s.uuid for s in sigs]
    for d in got:
        d.ack()
    broker.close()


def test_oversized_message_is_refused_at_publish(broker: PubSubBroker) -> None:
    queue = fresh()
    big = Signature("big", uuid=fresh("t"), routing_key=queue, args=[])
    big.kwargs = {"blob": "x" * (MAX_MESSAGE_BYTES + 1)}
    with pytest.raises(BrokerError, match="over Pub/Sub's limit"):
        broker.publish(big)
    assert broker.consume(queue, 1, 0.5) == []


def test_missing_topic_without_create_missing_names_it(config: Config) -> None:
    broker = make(config, create_missing="false")
    queue = fresh("never-created")
    with pytest.raises(BrokerError, match=f"topics/{queue}"):
        broker.publish(Signature("x", uuid=fresh("t"), routing_key=queue))
    broker.close()


def test_unreachable_endpoint_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, config: Config) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")
    broker = PubSubBroker.from_url(f"gcppubsub://machinery-test/{fresh('sub')}", config)
    started = time.monotonic()
    with pytest.raises(BrokerError, match="Pub/Sub could not"):
        broker.consume(fresh(), 1, 1.0)
    assert time.monotonic() - started < 20, "an unreachable endpoint must fail within seconds"
    broker.close()
