"""The SQS broker on moto: what the contract kit does not cover (FIFO, hops, DLQ redrive, size limits,
long tasks, missing queues)."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqs_testlib import VISIBILITY, sqs_url

from machinery import Config
from machinery.errors import BrokerError
from machinery.signature import Signature, State, new_uuid, now_utc
from machinery.testing import make_app
from machinery.testing._util import RunLog, eventually
from machinery_sqs import DynamoDBBackend, MessageTooLargeError, SQSBroker
from machinery_sqs.broker import HOP

pytestmark = pytest.mark.services


def sig(queue: str, *args: object, **fields: object) -> Signature:
    return Signature("sqs_test_task", args=list(args), uuid=new_uuid(), routing_key=queue, **fields)


def drain(
    broker: SQSBroker, queue: str, count: int, timeout: float, max_messages: int = 10
) -> list[Signature]:
    """Consume and ack until ``count`` messages came or ``timeout`` passed."""
    got: list[Signature] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        for delivery in broker.consume(queue, max_messages, 1.0):
            assert delivery.signature is not None, delivery.error
            got.append(delivery.signature)
            delivery.ack()
    return got


def test_fifo_order_within_each_group(broker: SQSBroker, name: str) -> None:
    queue = f"{name}.fifo"
    sent = [sig(queue, i, broker_message_group_id=f"g{i % 2}") for i in range(12)]
    for s in sent[:6]:
        broker.publish(s)
    broker.publish_many(sent[6:])
    got = drain(broker, queue, 12, 20, max_messages=3)
    for group in ("g0", "g1"):
        order = [s.uuid for s in got if s.broker_message_group_id == group]
        assert order == [s.uuid for s in sent if s.broker_message_group_id == group], f"{group} out of order"


def test_fifo_dedup_id_counts_retries(broker: SQSBroker, name: str) -> None:
    """The same task sent twice within SQS's 5-minute window is deduplicated; its retry is not."""
    queue = f"{name}.fifo"
    first = sig(queue, retry_count=3)
    broker.publish(first)
    broker.publish(first)  # a duplicate send (e.g. a producer retrying after a timeout)
    retried = first.copy()
    retried.retry_count = 2
    broker.publish(retried)
    got = drain(broker, queue, 3, 3)
    assert [s.retry_count for s in got] == [3, 2], "the duplicate must be dropped, the retry kept"


def test_eta_beyond_one_hop_arrives_on_time(config: Config, name: str) -> None:
    """An ETA past SQS's 900 s limit is reached hop by hop; here with 1 s hops for speed."""
    broker = SQSBroker.from_url(sqs_url(), config, delay_hop_seconds=1)
    try:
        eta = now_utc() + timedelta(seconds=2.5)
        broker.publish(sig(name, eta=eta))
        got = []
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            got = broker.consume(name, 1, 1.0)
        arrived = now_utc()
        assert got, "the ETA message never arrived"
        assert arrived >= eta, f"arrived {(eta - arrived).total_seconds():.2f}s early"
        assert (arrived - eta).total_seconds() < 3.0
        # the first send waits at most one 1 s hop: reaching an ETA 2.5 s away takes a fresh message
        hops = int(got[0].attributes.get(HOP, {}).get("StringValue", "0"))  # type: ignore[attr-defined]
        assert hops >= 1, "the message was not re-delayed in hops"
        got[0].ack()
    finally:
        broker.close()


def test_long_eta_waits_as_a_delayed_message(broker: SQSBroker, name: str) -> None:
    broker.publish(sig(name, eta=now_utc() + timedelta(hours=2)))
    assert broker.consume(name, 1, 1.0) == []
    assert broker.counts(name)["delayed"] == 1, "the message must wait in SQS (DelaySeconds 900)"


def test_dead_letter_queue_after_max_receives(config: Config, name: str) -> None:
    broker = SQSBroker.from_url(sqs_url(), config, max_receive_count=2)
    try:
        poison = sig(name, "poison")
        broker.publish(poison)
        for _attempt in range(2):
            got = broker.consume(name, 1, 5.0)
            assert [d.signature.uuid for d in got if d.signature] == [poison.uuid]
            got[0].nack(requeue=True)
        assert broker.consume(name, 1, 1.0) == [], "received more often than max_receive_count"
        letters = broker.dead_letters(name)
        assert [json.loads(x.body)["UUID"] for x in letters] == [poison.uuid]
    finally:
        broker.close()


def test_reject_without_dead_letter_queue_deletes(config: Config, name: str) -> None:
    broker = SQSBroker.from_url(sqs_url(), config, dead_letter_queue="")
    try:
        broker.publish(sig(name))
        got = broker.consume(name, 1, 5.0)
        got[0].nack(requeue=False)
        assert broker.consume(name, 1, 1.0) == []
        assert broker.dead_letters(name) == []
    finally:
        broker.close()


def test_message_over_the_queue_limit_is_a_clear_error(broker: SQSBroker, name: str) -> None:
    broker.client.create_queue(QueueName=name, Attributes={"MaximumMessageSize": "2048"})
    with pytest.raises(MessageTooLargeError, match="2048-byte message limit"):
        broker.publish(sig(name, "x" * 4096))
    with pytest.raises(MessageTooLargeError):
        broker.publish_many([sig(name, "small"), sig(name, "x" * 4096)])
    assert broker.consume(name, 10, 1.0) == [], "nothing of a refused batch may be sent"


def test_batch_publish_and_depth(broker: SQSBroker, name: str) -> None:
    sent = [sig(name, i) for i in range(23)]
    broker.publish_many(sent)
    assert broker.depth(name) == 23
    got = drain(broker, name, 23, 20)
    assert sorted(s.uuid for s in got) == sorted(s.uuid for s in sent)
    assert broker.depth(f"{name}-never") is None


def test_missing_queue_without_create_missing(config: Config, name: str) -> None:
    broker = SQSBroker.from_url(sqs_url(), config, create_missing=False)
    try:
        with pytest.raises(BrokerError, match=f"{name}.*does not exist.*create_missing"):
            broker.publish(sig(name))
        with pytest.raises(BrokerError, match=name):
            broker.consume(name, 1, 0.5)
    finally:
        broker.close()


def test_task_longer_than_visibility_runs_once(config: Config, name: str, tmp_path: Path) -> None:
    """Two workers on one queue; a task running 2.2 visibility timeouts is never handed to the other
    (the heartbeat renews its visibility), so it runs exactly once. Without the heartbeat the second
    worker would start it again one visibility timeout after the first receive, while it still runs."""
    config.default_queue = name
    config.worker.poll_timeout = 0.2
    config.no_unix_signals = True
    runlog = str(tmp_path / "runs")
    apps = [
        make_app(
            config=config,
            runlog=runlog,
            broker=SQSBroker.from_url(sqs_url(), config),
            backend=DynamoDBBackend.from_url("dynamodb://", config),
        )
        for _ in range(2)
    ]
    workers = [app.worker(f"w{i}", concurrency=2, queue=name) for i, app in enumerate(apps)]
    threads = [w.launch_async() for w in workers]
    try:
        result = apps[0].send_task(Signature("sleep_record", args=["long", VISIBILITY * 2.2]))
        assert result.get(timeout=30) == "long"
        log = RunLog(runlog)
        assert log.count("long", "start") == 1, "a task longer than the visibility timeout ran twice"
        eventually(lambda: apps[0].broker.depth(name) == 0, 5, "the message to be deleted")  # type: ignore[attr-defined]
    finally:
        for worker in workers:
            worker.quit()
        for thread in threads:
            thread.join(10)
        for app in apps:
            app.close()


def test_fifo_eta_holds_the_message_and_its_group(broker: SQSBroker, name: str) -> None:
    """FIFO queues take no per-message delay: a message received before its ETA is held invisible until
    due, and the later messages of its group wait behind it (order kept, never early)."""
    queue = f"{name}.fifo"
    eta = now_utc() + timedelta(seconds=2)
    later, after = sig(queue, "eta", eta=eta), sig(queue, "after")
    broker.publish(later)
    broker.publish(after)
    first = drain(broker, queue, 1, 10, max_messages=1)
    arrived = now_utc()
    rest = drain(broker, queue, 1, 10, max_messages=1)
    assert [s.uuid for s in first + rest] == [later.uuid, after.uuid], "FIFO order lost around an ETA"
    assert arrived >= eta, f"delivered {(eta - arrived).total_seconds():.2f}s before its ETA"


def test_reject_keeps_the_reason(broker: SQSBroker, name: str) -> None:
    sent = sig(name)
    broker.publish(sent)
    got = broker.consume(name, 1, 5.0)
    got[0].nack(requeue=False, reason="bad input")  # type: ignore[call-arg]
    letters = broker.dead_letters(name)
    assert [(json.loads(x.body)["UUID"], x.reason) for x in letters] == [(sent.uuid, "bad input")]
    assert broker.dead_letters(name) == letters, "listing dead letters must leave them in place"


def test_queue_deleted_behind_its_back_is_created_again(broker: SQSBroker, name: str) -> None:
    broker.publish(sig(name))
    broker.client.delete_queue(QueueUrl=broker.client.get_queue_url(QueueName=name)["QueueUrl"])
    again = sig(name)
    broker.publish(again)
    broker.publish_many([sig(name), sig(name)])
    got = drain(broker, name, 3, 10)
    assert again.uuid in [s.uuid for s in got] and len(got) == 3


def test_stop_task_deletion_on_error_leaves_failed_tasks_to_the_redrive_policy(
    config: Config, name: str, tmp_path: Path
) -> None:
    """Machinery #471 on queues with a redrive policy (maxReceiveCount 2). Queue ``kept``: the setting
    is on, so a failing task's message is not deleted; it runs again after the visibility timeout, and
    after 2 receives SQS moves it to the DLQ. Queue ``plain``: the setting is off; a task whose signature
    sets the flag is kept the same way, while one without it is deleted after its only run."""
    config.no_unix_signals = True
    config.worker.poll_timeout = 0.5
    runlog = str(tmp_path / "runs")
    kept, plain = f"{name}k", f"{name}p"
    apps = {
        queue: make_app(
            config=config,
            runlog=runlog,
            only=["flaky"],
            broker=SQSBroker.from_url(f"{sqs_url()}?{query}&max_receive_count=2", config),
            backend=DynamoDBBackend.from_url("dynamodb://", config),
        )
        for queue, query in ((kept, "stop_task_deletion_on_error=true"), (plain, "create_missing=true"))
    }
    workers = [app.worker(f"w-{queue}", concurrency=2, queue=queue) for queue, app in apps.items()]
    threads = [w.launch_async() for w in workers]
    try:

        def failing(key: str, queue: str, flag: bool = False) -> Signature:
            return Signature("flaky", args=[key, 99], routing_key=queue, stop_task_deletion_on_error=flag)

        by_setting = apps[kept].send_task(failing("by_setting", kept))
        by_flag = apps[plain].send_task(failing("by_flag", plain, flag=True))
        deleted = apps[plain].send_task(failing("deleted", plain))
        for result in (by_setting, by_flag, deleted):
            assert result.wait_state(timeout=20).state is State.FAILURE
        log = RunLog(runlog)
        brokers = {queue: app.broker for queue, app in apps.items()}

        def dead_uuids(queue: str) -> set[str]:
            return {json.loads(x.body)["UUID"] for x in brokers[queue].dead_letters(queue)}  # type: ignore[attr-defined]

        eventually(lambda: dead_uuids(kept) == {by_setting.uuid}, 30, "SQS's redrive to move it to the DLQ")
        eventually(lambda: dead_uuids(plain) == {by_flag.uuid}, 30, "SQS's redrive to move it to the DLQ")
        assert log.count("by_setting", "run") == 2, "kept for the redrive: run once per receive"
        assert log.count("by_flag", "run") == 2
        assert log.count("deleted", "run") == 1, "without the flag a failed task's message is deleted"
        assert brokers[plain].counts(plain)["in_flight"] == 0  # type: ignore[attr-defined]
    finally:
        for worker in workers:
            worker.quit()
        for thread in threads:
            thread.join(10)
        for app in apps.values():
            app.close()
