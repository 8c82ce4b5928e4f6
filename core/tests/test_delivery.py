"""machinery.delivery.BaseDelivery: decoding, repr, settle once."""

from __future__ import annotations

import logging
import threading

import pytest

from machinery import codec
from machinery.broker import Delivery
from machinery.delivery import BaseDelivery
from machinery.signature import Signature


class Recording(BaseDelivery):
    """A delivery that records what the broker was asked to do."""

    def __init__(self, body: bytes, **kwargs: object) -> None:
        super().__init__(body, **kwargs)  # type: ignore[arg-type]
        self.calls: list[tuple[object, ...]] = []

    def _ack(self) -> None:
        self.calls.append(("ack",))

    def _nack(self, requeue: bool, delay: float | None, reason: str) -> None:
        self.calls.append(("nack", requeue, delay, reason))

    def _extend(self, seconds: float) -> None:
        self.calls.append(("extend", seconds))


SECRET = "hunter2"


def body() -> bytes:
    return codec.encode_signature(Signature("login", [SECRET], uuid="task_1"))


def test_decodes_the_body_and_is_a_delivery() -> None:
    d = Recording(body(), queue="q")
    assert isinstance(d, Delivery)
    assert d.signature is not None and d.signature.name == "login" and d.error == ""
    assert (d.delivery_count, d.redelivered, d.settled) == (1, False, False)


def test_malformed_body_gives_an_error_not_an_exception() -> None:
    d = Recording(b"\xff not json")
    assert d.signature is None and d.error and d.body == b"\xff not json"
    assert "malformed" in repr(d)


def test_repr_leaves_the_body_out() -> None:
    d = Recording(body(), queue="orders", delivery_count=3)
    text = repr(d)
    assert SECRET not in text
    assert "Recording" in text and "orders" in text and "task_1" in text and "delivery 3" in text


def test_delivery_count_and_redelivered() -> None:
    assert Recording(body(), delivery_count=2).redelivered
    counted_nothing = Recording(body(), redelivered=True)
    assert counted_nothing.redelivered and counted_nothing.delivery_count == 1
    assert Recording(body(), delivery_count=0).delivery_count == 1


def test_settles_once_and_logs_the_second_try(caplog: pytest.LogCaptureFixture) -> None:
    d = Recording(body())
    d.nack(requeue=False, delay=None, reason="poison")
    with caplog.at_level(logging.DEBUG, logger="machinery.delivery"):
        d.ack()
        d.nack()
    assert d.calls == [("nack", False, None, "poison")]
    assert d.settled
    assert "already settled" in caplog.text


def test_extend_does_nothing_once_settled() -> None:
    d = Recording(body())
    d.extend(5)
    d.ack()
    d.extend(5)
    assert d.calls == [("extend", 5), ("ack",)]


def test_claim_is_atomic_across_threads() -> None:
    for _ in range(50):
        d = Recording(body())
        start = threading.Barrier(8)

        def settle(d: Recording = d, start: threading.Barrier = start) -> None:
            start.wait()
            d.ack()

        threads = [threading.Thread(target=settle) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert d.calls == [("ack",)]


def test_a_subclass_must_implement_ack_and_nack() -> None:
    d = BaseDelivery(body())
    with pytest.raises(NotImplementedError, match="_ack"):
        d.ack()
    with pytest.raises(NotImplementedError, match="_nack"):
        BaseDelivery(body()).nack()
    BaseDelivery(body()).extend(1)  # the default: leases that last while the consumer lives
