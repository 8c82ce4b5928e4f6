"""Pub/Sub specifics on the emulator: ETA holds and hops, no slot held while waiting, dead letters,
ordering keys, size and naming errors, an unreachable endpoint, batched acks (ack_many)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from gcppubsub_testlib import pubsub_url_for

from machinery import Config, Machinery, Signature
from machinery.broker import SupportsAckMany
from machinery.delivery import BaseDelivery
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


# ack_many (the worker's batched acks) --------------------------------------------------------------


class _Foreign(BaseDelivery):
    """A delivery of some other broker whose ack fails."""

    def _ack(self) -> None:
        raise RuntimeError("the other broker is down")


def publish_to(broker: PubSubBroker, queue: str, count: int) -> list[str]:
    sigs = [Signature("x", uuid=fresh("t"), routing_key=queue) for _ in range(count)]
    broker.publish_many(sigs)
    return [s.uuid for s in sigs]


def left_in(queue: str, config: Config, url: str, wait: float) -> list[str]:
    """What another consumer of the same subscription receives within ``wait`` s (then given back)."""
    other = PubSubBroker.from_url(url, config)
    try:
        got = consume_until(other, queue, 10, wait)
        return sorted(d.signature.uuid for d in got if d.signature)
    finally:
        other.close()


def test_ack_many_acks_in_one_call_per_subscription(
    config: Config, pubsub_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One Acknowledge per subscription; each delivery settled once (one acked before is skipped) and
    no longer renewed; a failing delivery of another broker is named in the BrokerError, after ours
    were acked; none comes back when the consumer closes."""
    broker = PubSubBroker.from_url(pubsub_url, config)
    assert isinstance(broker, SupportsAckMany)
    first, second = fresh(), fresh()
    publish_to(broker, first, 4)
    publish_to(broker, second, 2)
    got = consume_until(broker, first, 4, 10) + consume_until(broker, second, 2, 10)
    assert len(got) == 6
    got[0].ack()
    subscriber = broker._clients()[1]
    calls: list[tuple[str, int]] = []
    real = subscriber.acknowledge

    def counting(request: dict[str, Any], **kwargs: Any) -> Any:
        calls.append((request["subscription"], len(request["ack_ids"])))
        return real(request=request, **kwargs)

    monkeypatch.setattr(subscriber, "acknowledge", counting)
    foreign = _Foreign(b"{}")
    with pytest.raises(BrokerError, match="ack of <_Foreign.*the other broker is down"):
        broker.ack_many([*got, foreign])
    assert sorted(calls) == sorted(
        [(broker.subscription_path(first), 3), (broker.subscription_path(second), 2)]
    )
    assert all(d.settled for d in [*got, foreign])
    assert broker._leases.live() == [], "the lease keeper still renews acked deliveries"
    got[1].ack()  # settled by ack_many: no second call
    assert len(calls) == 2
    broker.close()  # gives back what is unsettled at once: nothing here
    assert left_in(first, config, pubsub_url, 1.0) == []
    assert left_in(second, config, pubsub_url, 0.5) == []


def test_ack_many_of_an_expired_ack_id_is_like_ack(config: Config, pubsub_url: str) -> None:
    """Pub/Sub takes an ack of an expired ack id without complaint, and the message comes back (at
    least once): ack_many and ack alike; the others of the batch are acked."""
    broker = PubSubBroker.from_url(pubsub_url, config)
    queue = fresh()
    publish_to(broker, queue, 4)
    got = consume_until(broker, queue, 4, 10)
    expired = [got[0], got[1]]
    subscription = broker.subscription_path(queue)
    broker._modify_deadline(subscription, [d._ack_id for d in expired], 0)  # as if its lease ran out
    got[0].ack()
    broker.ack_many(got[1:])
    broker.close()
    assert left_in(queue, config, pubsub_url, 3.0) == sorted(d.signature.uuid for d in expired if d.signature)


def test_ack_many_with_an_ack_id_pubsub_refuses(config: Config, pubsub_url: str) -> None:
    """Pub/Sub refuses a whole Acknowledge for one ack id it does not know: the others are acked one
    by one and the BrokerError says how many were refused, as a single ack's error does."""
    broker = PubSubBroker.from_url(pubsub_url, config)
    queue = fresh()
    publish_to(broker, queue, 3)
    got = consume_until(broker, queue, 3, 10)
    got[1]._ack_id = "not-an-ack-id"
    with pytest.raises(
        BrokerError, match=r"refused 1 of 3 acks on projects/.*/subscriptions/.*Invalid ack id"
    ):
        broker.ack_many(got)
    with pytest.raises(BrokerError, match=r"could not ack on projects/.*Invalid ack id"):
        got[1]._ack()
    broker.close()
    # the refused one comes back after its lease (2 s), the two others never
    assert left_in(queue, config, pubsub_url, 3.5) == [got[1].signature.uuid if got[1].signature else ""]
