"""``BrokerContract``: what every broker must do, and what each declared capability promises."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any, ClassVar, cast

import pytest

from ..broker import Broker, Delivery, SupportsAckMany, SupportsDeadLetters
from ..capabilities import Capability
from ..errors import BrokerError
from ..signature import Signature, new_uuid, now_utc
from ._base import ContractBase, capabilities_of, requires
from ._util import Child, eventually, ms, unique

__all__ = ["BrokerContract"]

#: a name no worker registers: the broker tests never run tasks
TASK = "contract_broker_task"


class BrokerContract(ContractBase):
    """Subclass with a ``broker_url`` fixture (or override ``make_broker``).

    ``eta_late_allowance``: how late (seconds) an ETA message may be delivered. ``ack_grace``: how long
    after ``ack()`` returned an ack may still be in flight (brokers that batch acks).
    """

    eta_late_allowance: ClassVar[float] = 1.0
    #: an ack may reach the server asynchronously, but this many seconds after ``ack()`` returned it
    #: must be durable (a consumer killed later must not get the message redelivered)
    ack_grace: ClassVar[float] = 0.5

    @pytest.fixture
    def queue(self) -> str:
        """A queue name used by this test only."""
        return unique("q")

    @pytest.fixture
    def broker(self) -> Broker:
        broker: Broker = self._maybe_new("broker")
        return broker

    # helpers -----------------------------------------------------------------------------------
    @staticmethod
    def sig(queue: str, *args: Any, **fields: Any) -> Signature:
        return Signature(TASK, args=list(args), uuid=new_uuid(), routing_key=queue, **fields)

    def collect(
        self, broker: Broker, queue: str, count: int, timeout: float, max_messages: int = 10, ack: bool = True
    ) -> list[Delivery]:
        """Consume until ``count`` deliveries arrived or ``timeout`` passed."""
        got: list[Delivery] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            limit = min(max_messages, count - len(got))
            batch = self.consume(broker, queue, limit, min(remaining, 1.0))
            assert len(batch) <= limit, f"consume returned {len(batch)} > max_messages {limit}"
            for delivery in batch:
                if ack:
                    delivery.ack()
            got.extend(batch)
        return got

    @staticmethod
    def consume(broker: Broker, queue: str, max_messages: int, timeout: float) -> list[Delivery]:
        """``broker.consume``, failing the test with the likely cause when it raises (the kit's
        servers are up: any exception is a bug, most often a body that could not be decoded)."""
        try:
            return broker.consume(queue, max_messages, timeout)
        except Exception as exc:
            pytest.fail(
                f"consume raised {type(exc).__name__}: {exc}. consume must not raise for a message it "
                "cannot decode: such a message comes back as a Delivery with signature None and error set "
                "(decode with machinery.broker.decode_body, as BaseDelivery does)"
            )

    @staticmethod
    def uuids(deliveries: list[Delivery]) -> list[str]:
        return [d.signature.uuid if d.signature is not None else "<malformed>" for d in deliveries]

    def assert_empty(self, broker: Broker, queue: str, wait: float = 0.3) -> None:
        left = self.consume(broker, queue, 10, wait)
        for delivery in left:
            delivery.nack(requeue=True)
        assert not left, f"queue {queue} still delivers {self.uuids(left)}"

    # basics ------------------------------------------------------------------------------------
    def test_broker_publish_consume_ack(self, broker: Broker, queue: str) -> None:
        sent = self.sig(queue, 1, "two", kwargs={"k": [1, 2]}, headers={"h": "v"})
        broker.publish(sent)
        deliveries = self.collect(broker, queue, 1, self.t(5), ack=False)
        assert len(deliveries) == 1, "the published message was not consumed"
        delivery = deliveries[0]
        assert delivery.signature is not None, f"decoding failed: {delivery.error}"
        assert not delivery.error
        got = delivery.signature
        assert (got.uuid, got.name, got.routing_key) == (sent.uuid, sent.name, queue)
        assert got.arg_values == [1, "two"]
        assert got.kwargs == {"k": [1, 2]}
        assert got.headers.get("h") == "v"
        assert isinstance(delivery.body, bytes | bytearray) and delivery.body
        delivery.ack()
        self.assert_empty(broker, queue)
        self.assert_empty(self.new_broker(), queue)

    def test_broker_consume_waits_for_timeout(self, broker: Broker, queue: str) -> None:
        start = time.monotonic()
        assert broker.consume(queue, 5, 1.0) == []
        elapsed = time.monotonic() - start
        assert elapsed >= 0.5, (
            f"consume(timeout=1.0) on an empty queue returned after {ms(elapsed)} (hot loop)"
        )
        assert elapsed <= 1.0 + self.t(2), f"consume(timeout=1.0) blocked for {elapsed:.1f}s"

    def test_broker_consume_wakes_on_publish(self, broker: Broker, queue: str) -> None:
        result: list[tuple[float, list[Delivery]]] = []
        waiting = threading.Event()

        def consume() -> None:
            consumer = self.new_broker()
            consumer.consume(unique("warmup"), 1, 0.01)
            waiting.set()
            got = consumer.consume(queue, 1, self.t(10))
            result.append((time.monotonic(), got))
            for d in got:
                d.ack()

        thread = threading.Thread(target=consume)
        thread.start()
        assert waiting.wait(self.t(10))
        time.sleep(0.1)  # let the consumer block (part of the measurement, not synchronisation)
        sent_at = time.monotonic()
        broker.publish(self.sig(queue))
        thread.join(self.t(15))
        assert result and len(result[0][1]) == 1, "a blocked consume did not receive the message"
        latency = result[0][0] - sent_at
        self.record("consume wake latency", ms(latency))
        assert latency < self.t(2.0), f"a blocked consume woke {latency:.2f}s after the publish"

    def test_broker_nack_requeue(self, broker: Broker, queue: str) -> None:
        sent = self.sig(queue)
        broker.publish(sent)
        first = self.collect(broker, queue, 1, self.t(5), ack=False)
        assert self.uuids(first) == [sent.uuid]
        assert not first[0].redelivered, "a message delivered for the first time has redelivered=True"
        first[0].nack(requeue=True)
        again = self.collect(broker, queue, 1, self.t(5), ack=False)
        assert self.uuids(again) == [sent.uuid], "a nacked message (requeue=True) did not come back"
        assert again[0].redelivered, (
            "a message given back with nack(requeue=True) came back with redelivered=False: it was "
            "delivered before, so redelivered must be True (PLUGINS.md, 'Answered questions')"
        )
        again[0].ack()
        self.assert_empty(broker, queue)

    def test_broker_nack_without_requeue(self, broker: Broker, queue: str) -> None:
        sent = self.sig(queue)
        broker.publish(sent)
        first = self.collect(broker, queue, 1, self.t(5), ack=False)
        assert self.uuids(first) == [sent.uuid]
        first[0].nack(requeue=False)
        self.assert_empty(broker, queue, 0.5)

    @requires(Capability.DEAD_LETTER, of="broker")
    def test_broker_dead_letter(self, broker: Broker, queue: str) -> None:
        sent = self.sig(queue)
        broker.publish(sent)
        first = self.collect(broker, queue, 1, self.t(5), ack=False)
        first[0].nack(requeue=False)
        self.assert_empty(broker, queue, 0.3)
        if not isinstance(broker, SupportsDeadLetters):
            pytest.skip(
                f"{type(broker).__name__} declares dead_letter but has no dead_letters(queue) to read"
            )
        letters: list[Any] = list(broker.dead_letters(queue))
        bodies = [getattr(x, "body", x) for x in letters]  # bytes: plugins written before DeadLetter
        assert first[0].body in bodies, "the dead-lettered message is not in dead_letters(queue)"

    @requires(Capability.DELAY, of="broker")
    def test_broker_nack_with_delay(self, broker: Broker, queue: str) -> None:
        broker.publish(self.sig(queue))
        first = self.collect(broker, queue, 1, self.t(5), ack=False)
        nacked_at = time.monotonic()
        first[0].nack(requeue=True, delay=1.0)
        again = self.collect(broker, queue, 1, self.t(8), ack=True)
        elapsed = time.monotonic() - nacked_at
        assert again, "a message nacked with delay=1.0 never came back"
        assert elapsed >= 0.95, f"a message nacked with delay=1.0 came back after {ms(elapsed)}"
        assert elapsed <= 1.0 + self.eta_late_allowance + self.t(1), f"came back {elapsed:.2f}s later"

    def test_broker_consume_never_exceeds_max_messages(self, broker: Broker, queue: str) -> None:
        sent = [self.sig(queue, i) for i in range(10)]
        broker.publish_many(sent)
        got: list[Delivery] = []
        deadline = time.monotonic() + self.t(10)
        for limit in [1, 3, 3, 1, 5, 5, 10]:
            while time.monotonic() < deadline and len(got) < len(sent):
                batch = broker.consume(queue, limit, 1.0)
                assert len(batch) <= limit, f"consume(max_messages={limit}) returned {len(batch)}"
                for d in batch:
                    d.ack()
                got.extend(batch)
                if batch:
                    break
        ids = self.uuids(got)
        assert sorted(ids) == sorted(s.uuid for s in sent), "publish_many + consume lost or added messages"
        assert len(set(ids)) == len(ids), "a message was delivered twice"
        assert broker.consume(queue, 0, 0.1) == [], "consume(max_messages=0) returned messages"

    @requires(Capability.FIFO, of="broker")
    def test_broker_fifo(self, broker: Broker, queue: str) -> None:
        sent = [self.sig(queue, i) for i in range(20)]
        for s in sent[:10]:
            broker.publish(s)
        broker.publish_many(sent[10:])
        got = self.collect(broker, queue, 20, self.t(10), max_messages=4)
        assert self.uuids(got) == [s.uuid for s in sent], "messages were not delivered in publish order"

    @requires(Capability.DELAY, of="broker")
    def test_broker_eta(self, broker: Broker, queue: str) -> None:
        eta = now_utc() + timedelta(seconds=1.0)
        later = self.sig(queue, "eta", eta=eta)
        broker.publish(later)
        now = self.sig(queue, "now")
        broker.publish(now)
        first = self.collect(broker, queue, 1, self.t(5))
        assert self.uuids(first) == [now.uuid], "a message with an ETA blocked (or overtook) one without"
        got = self.collect(broker, queue, 1, 1.0 + self.eta_late_allowance + self.t(5))
        received = now_utc()
        assert self.uuids(got) == [later.uuid], "the ETA message never arrived"
        early = (eta - received).total_seconds()
        assert early <= 0, f"the ETA message arrived {ms(early)} early"
        late = -early
        self.record("ETA lateness", ms(late))
        assert late <= self.eta_late_allowance, f"the ETA message arrived {late:.2f}s late"

    @requires(Capability.PRIORITY, of="broker")
    def test_broker_priority(self, broker: Broker, queue: str) -> None:
        sent = [self.sig(queue, p, priority=p) for p in (0, 9, 5, 1)]
        for s in sent:
            broker.publish(s)
        got = self.collect(broker, queue, 4, self.t(5), max_messages=1)
        assert [d.signature.priority for d in got if d.signature] == [9, 5, 1, 0]

    @requires(Capability.PENDING_LIST, of="broker")
    def test_broker_pending_list(self, broker: Broker, queue: str) -> None:
        assert broker.pending(queue) == []
        sent = [self.sig(queue, 1, 2), self.sig(queue, 3, 5), self.sig(queue, 6, 7, 8)]
        for s in sent:
            broker.publish(s)
        later = self.sig(queue, eta=now_utc() + timedelta(seconds=120))
        if Capability.DELAY in capabilities_of(broker):
            broker.publish(later)  # waits for its ETA: in delayed(), not in pending()
        pending = broker.pending(queue)
        assert later.uuid not in [p.uuid for p in pending], (
            "pending(queue) lists a message whose ETA is 2 minutes away: pending() lists what a consumer "
            "would get now; ETA messages belong to delayed() (PLUGINS.md, 'Answered questions')"
        )
        assert [p.uuid for p in pending] == [s.uuid for s in sent], "pending() is not what was sent, in order"
        assert [p.name for p in pending] == [TASK] * 3
        assert [len(p.args) for p in pending] == [2, 2, 3]
        self.collect(broker, queue, 3, self.t(5))
        assert broker.pending(queue) == []
        broker.purge(queue)

    @requires(Capability.DELAYED_LIST, of="broker")
    def test_broker_delayed_list(self, broker: Broker, queue: str) -> None:
        delayed = self.sig(queue, eta=now_utc() + timedelta(seconds=120))
        broker.publish(delayed)
        assert delayed.uuid in [s.uuid for s in broker.delayed()], "delayed() does not list an ETA message"
        assert delayed.uuid not in [s.uuid for s in broker.pending(queue)]
        broker.purge(queue)

    def test_broker_purge(self, broker: Broker, queue: str) -> None:
        """purge(queue) removes every waiting message of the queue; with ``delayed_list`` (the broker
        can see its ETA messages) the queue's ETA messages too."""
        other = unique("q")
        broker.publish_many([self.sig(queue, i) for i in range(5)])
        later = self.sig(queue, "eta", eta=now_utc() + timedelta(seconds=120))
        lists_delayed = Capability.DELAYED_LIST in capabilities_of(broker)
        if lists_delayed:
            broker.publish(later)
        kept = self.sig(other)
        broker.publish(kept)
        broker.purge(queue)
        self.assert_empty(broker, queue, 0.2)
        if lists_delayed:
            assert later.uuid not in [s.uuid for s in broker.delayed()], (
                "purge(queue) left the queue's ETA message in delayed(): a broker that lists its ETA "
                "messages must purge them too (PLUGINS.md, 'Answered questions')"
            )
        assert self.uuids(self.collect(broker, other, 1, self.t(5))) == [kept.uuid], "purge hit another queue"
        broker.purge(unique("never-used"))

    def test_broker_many_producers_and_consumers(self, queue: str) -> None:
        producers, consumers, per_producer = 4, 4, 100
        total = producers * per_producer
        sent: list[str] = []
        got: Counter[str] = Counter()
        errors: list[BaseException] = []
        mutex = threading.Lock()
        done = threading.Event()
        start = threading.Barrier(producers + consumers)
        brokers = [self.new_broker() for _ in range(producers + consumers)]

        def produce(broker: Broker, n: int) -> None:
            try:
                start.wait(30)
                batch = [self.sig(queue, n, i) for i in range(per_producer)]
                with mutex:
                    sent.extend(s.uuid for s in batch)
                for s in batch[: per_producer // 2]:
                    broker.publish(s)
                for i in range(per_producer // 2, per_producer, 10):
                    broker.publish_many(batch[i : i + 10])
            except BaseException as exc:
                errors.append(exc)

        def consume(broker: Broker) -> None:
            try:
                start.wait(30)
                while not done.is_set():
                    for d in broker.consume(queue, 8, 0.2):
                        d.ack()
                        with mutex:
                            got[d.signature.uuid if d.signature else "<malformed>"] += 1
                            if len(got) >= total:  # every task seen; a duplicate must not end it early
                                done.set()
            except BaseException as exc:
                errors.append(exc)
                done.set()

        started = time.monotonic()
        producing = [threading.Thread(target=produce, args=(brokers[i], i)) for i in range(producers)]
        threads = producing + [threading.Thread(target=consume, args=(b,)) for b in brokers[producers:]]
        for thread in threads:
            thread.start()
        deadline = started + self.t(60)
        last_count, last_progress = -1, time.monotonic()
        while not done.wait(0.1) and time.monotonic() < deadline:
            with mutex:
                count = sum(got.values())
            if count != last_count or any(t.is_alive() for t in producing):
                last_count, last_progress = count, time.monotonic()
            elif time.monotonic() - last_progress > self.t(3):
                break  # nothing new for 3 s after the producers finished: the rest is lost
        elapsed = time.monotonic() - started
        time.sleep(0.3)  # a duplicate delivered right after the last one still gets counted
        done.set()
        for thread in threads:
            thread.join(self.t(10))
        assert not errors, f"producer/consumer errors: {errors[:3]!r}"
        missing = set(sent) - set(got)
        duplicated = {u: n for u, n in got.items() if n > 1}
        unknown = set(got) - set(sent)
        assert not missing, f"{len(missing)} of {total} messages lost"
        assert not duplicated, f"{len(duplicated)} messages delivered more than once"
        assert not unknown, f"{len(unknown)} unexpected messages"
        self.record("4x4 producers/consumers", f"{total} messages in {elapsed:.2f}s")

    def test_broker_payloads_round_trip(self, broker: Broker, queue: str) -> None:
        big = "x" * (256 * 1024)
        text = 'unicode ☃ 日本語 Ωμέγα עברית 🎉 \u2028 \\ " \n\t'
        ints = [2**100, -(2**100), 2**64 - 1, 2**63 - 1, -(2**63)]
        cases = [
            self.sig(queue, big),
            self.sig(queue, text, headers={"note": text}),
            self.sig(queue, *ints),
            self.sig(queue, b"\x00\x01\xfe\xff", 1.5, True, kwargs={"nested": {"a": [1, [2, {"b": None}]]}}),
        ]
        for s in cases:
            broker.publish(s)
        got = {
            d.signature.uuid: d.signature
            for d in self.collect(broker, queue, len(cases), self.t(10))
            if d.signature
        }
        assert set(got) == {s.uuid for s in cases}, "a message with a large or unusual payload was lost"
        for s in cases:
            assert got[s.uuid].arg_values == s.arg_values
            assert got[s.uuid].kwargs == s.kwargs
        assert got[cases[1].uuid].headers.get("note") == text

    def test_broker_malformed_message(self, broker: Broker, queue: str, publish_raw: Any) -> None:
        put = self.need("publish_raw", publish_raw)
        garbage = b"\xff\xfe this is not JSON {"
        put(queue, garbage)
        good = self.sig(queue)
        broker.publish(good)
        got = self.collect(broker, queue, 2, self.t(10), ack=False)  # fails naming consume when it raises
        bad = [d for d in got if d.signature is None]
        fine = [d for d in got if d.signature is not None]
        assert len(bad) == 1, (
            f"the malformed message did not surface as a Delivery with signature None: {got}"
        )
        assert bad[0].error, "a malformed Delivery must say why in .error"
        assert bytes(bad[0].body) == garbage
        assert self.uuids(fine) == [good.uuid], "consumption did not go on after a malformed message"
        bad[0].nack(requeue=False)
        fine[0].ack()
        self.assert_empty(broker, queue)

    def test_broker_close_is_idempotent(self, queue: str) -> None:
        unused = self.new_broker()
        unused.close()
        unused.close()
        used = self.new_broker()
        used.publish(self.sig(queue))
        self.collect(used, queue, 1, self.t(5))
        used.close()
        used.close()

    def test_broker_eta_message_delivered(self, broker: Broker, queue: str) -> None:
        """Every broker accepts an ETA and hands the message out with its ETA intact, declared
        ``delay`` or not: the worker never runs a task early (it gives an early message back with
        ``nack(requeue=True, delay=...)``), so the broker must neither drop nor reject it."""
        eta = now_utc() + timedelta(seconds=0.3)
        sent = self.sig(queue, eta=eta)
        broker.publish(sent)
        got = self.collect(broker, queue, 1, 0.3 + self.eta_late_allowance + self.t(5), ack=False)
        assert self.uuids(got) == [sent.uuid], "a message with an ETA was never delivered"
        signature = got[0].signature
        assert signature is not None and signature.eta is not None, "the delivered message lost its ETA"
        drift = abs((signature.eta - eta).total_seconds())
        assert drift < 0.001, f"the ETA changed on the way by {ms(drift)}"
        nacked_at = time.monotonic()
        got[0].nack(requeue=True, delay=0.2)  # what the worker does with a message that came early
        again = self.collect(broker, queue, 1, self.t(5), ack=True)
        assert self.uuids(again) == [sent.uuid], (
            f"a message nacked with requeue=True, delay=0.2 did not come back within "
            f"{time.monotonic() - nacked_at:.1f}s (a broker without the delay capability may approximate "
            "the delay, never lose the message)"
        )

    def test_broker_after_close(self, queue: str) -> None:
        """After ``close()`` a broker either works again (starting afresh) or refuses with a
        BrokerError at once; it never hangs and never loses a message it accepted."""
        closed = self.new_broker()
        closed.publish(self.sig(queue))
        self.collect(closed, queue, 1, self.t(5))
        closed.close()
        sent = self.sig(queue, "after close")
        error, elapsed = _run_bounded(lambda: closed.publish(sent), self.t(10))
        if error is _STILL_RUNNING:
            pytest.fail(f"publish on a closed broker still blocks after {elapsed:.0f}s: work or raise")
        if error is not None:
            assert isinstance(error, BrokerError), (
                f"publish on a closed broker raised {type(error).__name__}: {error}; expected a BrokerError "
                "(or success: reuse after close is allowed)"
            )
            self.record("after close", f"refused: {type(error).__name__}")
        else:
            got = self.collect(self.new_broker(), queue, 1, self.t(5))
            assert self.uuids(got) == [sent.uuid], "a message published after close() was lost"
            self.record("after close", "reusable")
        closed.close()

    # fairness ----------------------------------------------------------------------------------
    def test_broker_consumers_share_a_queue(self, broker: Broker, queue: str) -> None:
        """Two consumers of one queue both get a fair share of messages arriving one by one. Each
        works on a message for 40 ms before asking for the next (a worker with one slot), so a broker
        that hands messages to a busy consumer (prefetching, buffering) starves the idle one."""
        total = 24
        consumers = {"A": self.new_broker(), "B": self.new_broker()}
        got: Counter[str] = Counter()
        errors: list[BaseException] = []
        mutex = threading.Lock()
        stop = threading.Event()
        start = threading.Barrier(len(consumers) + 1)

        def consume(name: str, consumer: Broker) -> None:
            try:
                consumer.consume(unique("warmup"), 1, 0.01)  # connected before the first message
                start.wait(self.t(10))
                while not stop.is_set():
                    for delivery in consumer.consume(queue, 1, 0.2):
                        with mutex:
                            got[name] += 1
                        stop.wait(0.04)  # the work: this consumer is busy meanwhile
                        delivery.ack()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=consume, args=item) for item in consumers.items()]
        for thread in threads:
            thread.start()
        try:
            start.wait(self.t(10))
            for i in range(total):
                broker.publish(self.sig(queue, i))
                time.sleep(0.02)  # arrivals one by one: the scenario, not a synchronisation
            eventually(lambda: sum(got.values()) >= total or errors, self.t(10), f"{total} deliveries")
        finally:
            stop.set()
            for thread in threads:
                thread.join(self.t(10))
        assert not errors, f"a consumer failed: {errors[:2]!r}"
        self.record("share of two consumers", f"{got['A']}/{got['B']} of {total}")
        assert min(got["A"], got["B"]) >= total // 6, (
            f"two consumers of one queue got {got['A']} and {got['B']} of {total} messages: one consumer "
            "starves the other: messages go to a busy consumer while an idle one waits (one active consumer "
            "per queue, a consumer that hoards, or a poll schedule the other never wins: hand messages to "
            "whoever asks, add jitter to poll intervals or wait server-side)"
        )

    def test_broker_requeued_message_reaches_another_consumer(self, broker: Broker, queue: str) -> None:
        """A worker that does not know a task publishes it again with a short ETA and acks it (see
        Worker._unregistered); another consumer of the queue must get it within a few tries."""
        tries = 10
        requeuer, other = self.new_broker(), self.new_broker()
        taken = threading.Event()
        listening = threading.Event()
        stop = threading.Event()
        errors: list[BaseException] = []

        def consume_other() -> None:
            try:
                other.consume(unique("warmup"), 1, 0.01)  # connected before the first round
                listening.set()
                while not stop.is_set() and not taken.is_set():
                    for delivery in other.consume(queue, 1, 0.2):
                        delivery.ack()
                        taken.set()
            except BaseException as exc:
                errors.append(exc)

        sent = self.sig(queue)
        broker.publish(sent)
        got = self.collect(requeuer, queue, 1, self.t(5), ack=False)  # before the other one listens
        assert self.uuids(got) == [sent.uuid]
        thread = threading.Thread(target=consume_other)
        thread.start()
        try:
            assert listening.wait(self.t(10)), "the other consumer did not start"
            won_back = 0
            while got and won_back < tries:
                signature = got[0].signature
                assert signature is not None
                signature.eta = now_utc() + timedelta(seconds=0.1)  # the worker's first requeue back-off
                requeuer.publish(signature)
                got[0].ack()
                got = self.consume(requeuer, queue, 1, self.t(1.0))
                if got:
                    won_back += 1
            if not got:
                assert taken.wait(self.t(5)), "the requeued message was lost: neither consumer got it"
        finally:
            stop.set()
            thread.join(self.t(10))
        assert not errors, f"the other consumer failed: {errors[:2]!r}"
        self.record("requeue taken back by its requeuer", f"{won_back} times")
        assert taken.is_set(), (
            f"a consumer that published a message again (ETA +0.1 s, as the worker requeues a task it does "
            f"not know) took it back {tries} times in a row while another consumer waited on the queue. "
            "Polling consumers need jitter: a poll schedule that lines up with the ETA the consumer just "
            "set always looks first (randomise poll intervals, or wait server-side with first-come waiters)"
        )

    # redelivery --------------------------------------------------------------------------------
    @requires(Capability.REDELIVERY, of="broker")
    def test_broker_redelivery_after_connection_loss(self, broker: Broker, queue: str) -> None:
        """A consumer that closes (loses its connection) without acking gives its messages back."""
        acked, unacked = self.sig(queue, "acked"), self.sig(queue, "unacked")
        broker.publish_many([acked, unacked])
        lost = self.new_broker()
        got = self.collect(lost, queue, 2, self.t(5), max_messages=2, ack=False)
        by_uuid = {d.signature.uuid: d for d in got if d.signature}
        assert set(by_uuid) == {acked.uuid, unacked.uuid}
        by_uuid[acked.uuid].ack()
        lost.close()
        started = time.monotonic()
        back = self.collect(self.new_broker(), queue, 1, self.t(2 * self.lease_seconds + 3))
        assert self.uuids(back) == [unacked.uuid], (
            f"an unacked message did not come back within {2 * self.lease_seconds + 3:.0f}s of its consumer "
            f"closing (lease_seconds={self.lease_seconds})"
        )
        self.record("redelivery after close", f"{time.monotonic() - started:.2f}s")
        self.assert_empty(broker, queue, 0.5)

    @requires(Capability.REDELIVERY, of="broker")
    def test_broker_close_gives_back_at_once(self, broker: Broker, queue: str) -> None:
        """``close()`` hands unsettled messages back at once: another consumer gets them well before
        their lease would have run out."""
        sent = self.sig(queue)
        broker.publish(sent)
        holder = self.new_broker()
        got = self.collect(holder, queue, 1, self.t(5), ack=False)
        assert self.uuids(got) == [sent.uuid]
        holder.close()
        closed = time.monotonic()
        limit = self.t(self.lease_seconds / 2)
        back = self.collect(broker, queue, 1, limit, ack=False)
        assert self.uuids(back) == [sent.uuid], (
            f"a message held by a consumer that closed was not handed to another consumer within "
            f"{limit:.1f}s (lease_seconds={self.lease_seconds}): close() keeps unsettled messages leased "
            "until their lease runs out; it must give them back at once (LeaseKeeper.close returns them)"
        )
        self.record("given back by close", ms(time.monotonic() - closed))
        back[0].ack()

    @requires(Capability.REDELIVERY, of="broker")
    def test_broker_ack_is_final(self, broker: Broker, queue: str) -> None:
        """An acked message never comes back: not after its lease, not when its consumer closes."""
        sent = self.sig(queue)
        broker.publish(sent)
        consumer = self.new_broker()
        got = self.collect(consumer, queue, 1, self.t(5), ack=False)
        assert self.uuids(got) == [sent.uuid]
        got[0].ack()
        acked = time.monotonic()
        wait = self.lease_seconds + self.t(1.5)
        back = self.collect(broker, queue, 1, wait, ack=False)
        assert not back, (
            f"an acked message came back {time.monotonic() - acked:.1f}s after ack() "
            f"(lease_seconds={self.lease_seconds}): ack() did not remove it, so its lease ran out and it was "
            "delivered again (ack must delete the message on the server, at the latest ack_grace later)"
        )
        consumer.close()
        back = self.collect(broker, queue, 1, self.t(0.5), ack=False)
        assert not back, (
            "an acked message came back when its consumer closed: ack() did not remove it and close() "
            "gave it back"
        )

    def test_broker_ack_many_is_final(self, broker: Broker, queue: str) -> None:
        """``ack_many`` (``SupportsAckMany``, the worker's batched acks) settles each delivery once, as
        ``ack()`` does: one acked before is skipped, one of another broker object is acked by its own,
        a later ``ack()`` does nothing, and none comes back after its lease or when its consumer closes."""
        if not isinstance(broker, SupportsAckMany):
            pytest.skip(f"{type(broker).__name__} has no ack_many (SupportsAckMany)")
        elsewhere = unique("q")  # the other broker's queue: no consumer can take the other's messages
        broker.publish_many([self.sig(queue, n) for n in range(3)])
        broker.publish(self.sig(elsewhere))
        consumer, other = self.new_broker(), self.new_broker()
        got = self.collect(consumer, queue, 3, self.t(5), ack=False)
        foreign = self.collect(other, elsewhere, 1, self.t(5), ack=False)
        assert (len(got), len(foreign)) == (3, 1), "the published messages were not consumed"
        got[0].ack()  # settled before: ack_many must skip it (a second ack can be an error on the server)
        cast(SupportsAckMany, consumer).ack_many([*got, *foreign])
        for delivery in [*got, *foreign]:
            delivery.ack()  # settled by ack_many: nothing happens
        if Capability.REDELIVERY in capabilities_of(broker):
            wait = self.lease_seconds + self.t(1.5)
            back = self.collect(broker, queue, 1, wait, ack=False)
            back += self.collect(broker, elsewhere, 1, self.t(0.3), ack=False)
            assert not back, f"acked by ack_many, yet delivered again after the lease: {self.uuids(back)}"
        consumer.close()
        other.close()
        back = self.collect(broker, queue, 1, self.t(0.5), ack=False)
        back += self.collect(broker, elsewhere, 1, self.t(0.3), ack=False)
        assert not back, (
            f"acked by ack_many, yet given back when the consumers closed: {self.uuids(back)} (ack_many "
            "must remove the messages and settle the deliveries, so close() does not give them back)"
        )

    @requires(Capability.REDELIVERY, of="broker")
    @requires(Capability.MULTI_PROCESS, of="broker")
    def test_broker_redelivery_after_consumer_killed(self, broker: Broker, queue: str) -> None:
        """A consumer process killed with SIGKILL loses nothing: after the lease its unacked
        message is delivered again (``redelivered=True``); the acked one never comes back."""
        url = self.need_url("broker")
        acked, unacked = self.sig(queue, "acked"), self.sig(queue, "unacked")
        broker.publish_many([acked, unacked])
        child = Child(
            "machinery.testing.procs",
            {
                "cmd": "consume",
                "url": url,
                "config": self.config,
                "queue": queue,
                "count": 2,
                "ack": [acked.uuid],
                "ack_grace": self.ack_grace,
                "plugin_modules": list(self.plugin_modules),
            },
            self.workdir,
            "consumer",
        )
        self.closing(child.close)
        consumed = child.expect_json("consumed", self.t(20))
        assert sorted(consumed) == sorted([acked.uuid, unacked.uuid]), f"the child consumed {consumed}"
        child.expect("acked", self.t(10))
        child.kill()
        killed = time.monotonic()
        timeout = self.t(2 * self.lease_seconds + 3)
        back = self.collect(broker, queue, 1, timeout, ack=False)
        assert self.uuids(back) == [unacked.uuid], (
            f"the unacked message of a killed consumer did not come back within {timeout:.0f}s "
            f"(lease_seconds={self.lease_seconds})"
        )
        self.record("redelivery after SIGKILL", f"{time.monotonic() - killed:.2f}s")
        assert back[0].redelivered, "a redelivered message must have redelivered=True"
        back[0].ack()
        self.assert_empty(broker, queue, 0.5)

    @requires(Capability.EXTEND_VISIBILITY, of="broker")
    def test_broker_extend_keeps_the_lease(self, broker: Broker, queue: str) -> None:
        broker.publish(self.sig(queue))
        got = self.collect(broker, queue, 1, self.t(5), ack=False)
        got[0].extend(self.lease_seconds * 4)
        other = self.new_broker()
        stolen = other.consume(queue, 1, self.lease_seconds * 1.5)
        assert not stolen, "an extended lease ran out: another consumer got the message"
        got[0].ack()
        self.assert_empty(broker, queue)


#: what :func:`_run_bounded` returns for a call that did not return in time
_STILL_RUNNING = TimeoutError("still running")


def _run_bounded(fn: Callable[[], object], timeout: float) -> tuple[BaseException | None, float]:
    """Run ``fn`` in a daemon thread: the exception it raised (None when it returned, or
    ``_STILL_RUNNING``) and the seconds it took."""
    out: list[BaseException | None] = []
    started = time.monotonic()

    def run() -> None:
        try:
            fn()
            out.append(None)
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return (out[0] if out else _STILL_RUNNING), time.monotonic() - started
