"""Message signing (machinery.signing): the canonical form, the checks, a worker rejecting what fails."""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest

from machinery import Config, Machinery, Signature, State
from machinery.codec import decode_signature, encode_signature
from machinery.errors import ConfigError
from machinery.signature import Arg, TaskState, now_utc
from machinery.signing import SIGNATURE_HEADER, Signer, key_id, parse_key, signer_for
from machinery.worker import Worker

OLD_KEY = "old-key-0123456789abcdef"
NEW_KEY = "base64:" + base64.b64encode(bytes(range(32))).decode()


def _signer(*keys: str, max_age: float = 0.0) -> Signer:
    signer = signer_for(Config(signing_keys=list(keys), signing_max_age=max_age))
    assert signer is not None
    return signer


def _rich() -> Signature:
    callback = Signature("add", args=[Arg(5, "int64")], headers={"x": "y"})
    return Signature(
        "add",
        uuid="task_1",
        args=[Arg(1, "int64"), Arg(2.5, "float64"), Arg("é", "string"), Arg([1, 2], "[]int64")],
        kwargs={"k": {"nested": [1, None]}},
        headers={"traceparent": "00-abc-def-01"},
        eta=now_utc() + timedelta(seconds=3),
        retry_count=2,
        on_success=[callback],
    )


def _over_the_wire(sig: Signature) -> Signature:
    return decode_signature(encode_signature(sig))


def test_signed_message_verifies_after_encoding_and_decoding() -> None:
    signer = _signer(OLD_KEY)
    sig = _rich()
    signer.sign(sig)
    header = sig.headers[SIGNATURE_HEADER]
    version, kid, timestamp, mac = header.split(":")
    assert (version, kid, len(mac)) == ("v1", key_id(parse_key(OLD_KEY)), 64)
    assert abs(int(timestamp) - time.time()) < 5
    assert signer.problem(_over_the_wire(sig)) is None


def test_a_transport_receipt_handle_is_not_covered() -> None:
    signer = _signer(OLD_KEY)
    sig = _rich()
    signer.sign(sig)
    received = _over_the_wire(sig)
    received.sqs_receipt_handle = "AQEB..."
    assert signer.problem(received) is None


@pytest.mark.parametrize(
    "tamper",
    [
        lambda s: setattr(s, "name", "delete_everything"),
        lambda s: setattr(s, "args", [Arg(2, "int64")]),
        lambda s: s.kwargs.update(k=1),
        lambda s: setattr(s, "uuid", "task_of_someone_else"),
        lambda s: setattr(s, "routing_key", "other"),
        lambda s: setattr(s, "eta", None),
        lambda s: setattr(s, "retry_count", 99),
        lambda s: s.headers.update(extra="1"),
        lambda s: s.on_success[0].args.append(Arg(7, "int64")),
    ],
    ids=["name", "args", "kwargs", "uuid", "queue", "eta", "retries", "headers", "callback"],
)
def test_any_change_after_signing_is_caught(tamper: Callable[[Signature], None]) -> None:
    signer = _signer(OLD_KEY)
    sig = _rich()
    signer.sign(sig)
    received = _over_the_wire(sig)
    tamper(received)
    assert signer.problem(received) == "bad signature (forged or tampered)"


def test_unsigned_forged_and_malformed_headers() -> None:
    signer = _signer(OLD_KEY)
    assert signer.problem(Signature("add")) == "unsigned"
    forged = Signature("add")
    _signer("an attacker's own key 0123456789").sign(forged)
    assert signer.problem(forged) is not None and signer.problem(forged).startswith("unknown key id")  # type: ignore[union-attr]
    kid = key_id(parse_key(OLD_KEY))
    guessed = Signature("add", headers={SIGNATURE_HEADER: f"v1:{kid}:{int(time.time())}:{'0' * 64}"})
    assert signer.problem(guessed) == "bad signature (forged or tampered)"
    for header in ("v2:x:1:ab", "v1:x:notanumber:ab", "v1:only-three:parts", 42):
        assert signer.problem(Signature("add", headers={SIGNATURE_HEADER: header})) == (
            "malformed signature header"
        )


def test_max_age_counts_from_the_later_of_signing_and_eta() -> None:
    signer = _signer(OLD_KEY, max_age=60)
    now = float(int(time.time()))  # the header holds whole seconds
    old = Signature("add")
    signer.sign(old, now=now - 120)
    problem = signer.problem(old, now=now)
    assert problem is not None and problem.startswith("too old (120s")
    delayed = Signature("add", eta=now_utc() - timedelta(seconds=30))  # due 30 s ago, signed 2 min ago
    signer.sign(delayed, now=now - 120)
    assert signer.problem(delayed, now=now) is None
    assert _signer(OLD_KEY).problem(old, now=now) is None  # max_age 0: no limit


def test_rotation_first_key_signs_every_key_verifies() -> None:
    before, during, after = _signer(OLD_KEY), _signer(NEW_KEY, OLD_KEY), _signer(NEW_KEY)
    by_old, by_new = Signature("add"), Signature("add")
    before.sign(by_old)
    during.sign(by_new)
    assert by_new.headers[SIGNATURE_HEADER].split(":")[1] == key_id(parse_key(NEW_KEY))
    assert during.problem(by_old) is None and during.problem(by_new) is None
    assert after.problem(by_new) is None
    assert after.problem(by_old) is not None and before.problem(by_new) is not None


def test_keys_parse_and_bad_keys_are_clear_errors_that_never_show_the_key() -> None:
    assert parse_key(NEW_KEY) == bytes(range(32))
    assert parse_key(OLD_KEY) == OLD_KEY.encode()
    for bad, message in [
        ("tooShortSecret", "at least 16"),
        ("base64:!!!notbase64SECRETSECRET", "not valid base64"),
        ("base64:" + base64.b64encode(b"shortSECRET").decode(), "at least 16"),
    ]:
        with pytest.raises(ConfigError, match=message) as info:
            parse_key(bad)
        assert "SECRET" not in str(info.value)
    with pytest.raises(ConfigError, match="signing_keys") as error:
        Config(signing_keys=["tooShortSecret"]).validate()
    assert "tooShortSecret" not in str(error.value)
    with pytest.raises(ConfigError, match="signing_keys"):
        Config(signing_keys=[OLD_KEY, OLD_KEY]).validate()


def test_keys_never_shown_by_config_or_signer() -> None:
    config = Config(signing_keys=[OLD_KEY, NEW_KEY])
    signer = signer_for(config)
    for text in (repr(config), str(config.redacted()), repr(signer)):
        assert OLD_KEY not in text and NEW_KEY not in text and "old-key" not in text


def test_settings_from_env_and_yaml(tmp_path: object) -> None:
    env = {"MACHINERY_SIGNING_KEYS": f"{NEW_KEY}, {OLD_KEY}", "MACHINERY_SIGNING_MAX_AGE": "300"}
    config = Config.from_env(env)
    assert config.signing_keys == [NEW_KEY, OLD_KEY] and config.signing_max_age == 300
    pytest.importorskip("yaml")
    from pathlib import Path

    path = Path(str(tmp_path)) / "c.yml"
    path.write_text(f"signing_keys:\n  - {OLD_KEY}\nsigning_max_age: 30\n")
    loaded = Config.from_yaml(path)
    assert loaded.signing_keys == [OLD_KEY] and loaded.signing_max_age == 30


def test_no_keys_no_signer_and_nothing_signed(app: Machinery) -> None:
    assert signer_for(app.config) is None
    sig = Signature("add")
    app.broker.publish(sig)
    assert SIGNATURE_HEADER not in sig.headers


# --------------------------------------------------------------------------------------------------
# A worker with keys


class _Seen(logging.Handler):
    """Collects log messages of one logger; ``wait_for`` blocks until one contains a text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.changed:
            self.messages.append(record.getMessage())
            self.changed.notify_all()

    def wait_for(self, text: str, timeout: float = 10.0) -> str:
        with self.changed:
            found = self.changed.wait_for(lambda: [m for m in self.messages if text in m], timeout)
        assert found, f"no log line with {text!r} in {self.messages}"
        return found[0]


@pytest.fixture
def seen() -> Iterator[_Seen]:
    handler = _Seen()
    loggers = [logging.getLogger("machinery.signing"), logging.getLogger("machinery")]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    yield handler
    for lg, level in zip(loggers, old, strict=True):
        lg.removeHandler(handler)
        lg.setLevel(level)


@pytest.fixture
def signed_app(memory_url: str) -> Iterator[Machinery]:
    config = Config(broker=memory_url, result_backend=memory_url, signing_keys=[NEW_KEY, OLD_KEY])
    config.worker.shutdown_grace = 5.0
    config.worker.poll_timeout = 0.1
    app = Machinery(config)
    yield app
    app.close()


@pytest.fixture
def runs(signed_app: Machinery) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []

    @signed_app.task
    def add(a: int, b: int) -> int:
        calls.append((a, b))
        return a + b

    return calls


@pytest.fixture
def worker(signed_app: Machinery, runs: list[tuple[int, int]]) -> Iterator[Worker]:
    worker = signed_app.worker("signed", concurrency=2)
    thread = worker.launch_async()
    yield worker
    worker.quit()
    thread.join(10)


def _rejected(app: Machinery, seen: _Seen, uuid: str, check: str) -> None:
    """The log named ``check`` for ``uuid`` and the message is in the dead-letter store."""
    line = seen.wait_for(f"uuid {uuid!r}: signature check failed")
    assert check in line and "dead-lettered" in line
    deadline = time.monotonic() + 5
    while not any(
        uuid.encode() in letter.body for letter in app.broker.dead_letters(app.config.default_queue)
    ):  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the rejected message was not dead-lettered"
        time.sleep(0.01)


def test_worker_runs_what_its_app_sends_chains_and_retries(
    signed_app: Machinery, worker: Worker, runs: list[tuple[int, int]]
) -> None:
    one = signed_app.send_task(Signature("add", args=[Arg(1, "int64"), Arg(2, "int64")]))
    assert one.get(timeout=10) == 3
    chain = signed_app.send_chain(
        [Signature("add", args=[Arg(1, "int64"), Arg(1, "int64")]), Signature("add", args=[Arg(10, "int64")])]
    )
    assert chain.get(timeout=10) == 12  # the callback the worker published was signed too
    attempts: list[int] = []

    @signed_app.task
    def flaky() -> int:
        attempts.append(1)
        if len(attempts) < 3:
            raise ValueError("not yet")
        return len(attempts)

    assert signed_app.send_task(Signature("flaky", retry_count=3)).get(timeout=15) == 3  # retries re-signed


def test_forged_message_never_runs_and_never_overwrites_a_state(
    signed_app: Machinery, worker: Worker, runs: list[tuple[int, int]], seen: _Seen
) -> None:
    real = signed_app.send_task(Signature("add", args=[Arg(2, "int64"), Arg(2, "int64")]))
    assert real.get(timeout=10) == 4
    forged = Signature("add", uuid=real.uuid, args=[Arg(666, "int64"), Arg(0, "int64")])
    forged.routing_key = signed_app.config.default_queue
    signed_app.broker.publish(forged)  # straight onto the queue: unsigned
    _rejected(signed_app, seen, real.uuid, "unsigned")
    assert runs == [(2, 2)]
    state = signed_app.backend.get_state(real.uuid)
    assert state is not None and state.state is State.SUCCESS and real.get(timeout=1) == 4


def test_tampered_and_too_old_messages_are_rejected(
    signed_app: Machinery, worker: Worker, runs: list[tuple[int, int]], seen: _Seen
) -> None:
    signer = signer_for(signed_app.config)
    assert signer is not None
    tampered = Signature("add", uuid="task_tampered", args=[Arg(1, "int64"), Arg(1, "int64")])
    tampered.routing_key = signed_app.config.default_queue
    signer.sign(tampered)
    tampered.args[0] = Arg(1000, "int64")
    signed_app.broker.publish(tampered)
    _rejected(signed_app, seen, "task_tampered", "bad signature")

    signed_app.config.signing_max_age = 60
    old = Signature("add", uuid="task_old", args=[Arg(1, "int64"), Arg(1, "int64")])
    old.routing_key = signed_app.config.default_queue
    signer.sign(old, now=time.time() - 3600)
    signed_app.broker.publish(old)
    _rejected(signed_app, seen, "task_old", "too old")
    assert runs == []
    assert signed_app.backend.get_state("task_tampered") is None  # not even RECEIVED
    assert signed_app.backend.get_state("task_old") is None


def test_unregistered_requeue_is_signed_again(signed_app: Machinery, worker: Worker, seen: _Seen) -> None:
    result = signed_app.send_task(Signature("late"))
    seen.wait_for("'late' is not registered here; requeued")
    signed_app.register_task("late", lambda: "ok")
    assert result.get(timeout=10) == "ok"
    assert not [m for m in seen.messages if "signature check failed" in m]


def test_worker_without_keys_ignores_the_header(app: Machinery) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    sig = Signature("add", args=[Arg(1, "int64"), Arg(2, "int64")])
    sig.routing_key = app.config.default_queue
    sig.ensure_uuid()
    _signer(OLD_KEY).sign(sig)
    app.backend.set_state(TaskState(sig.uuid, State.PENDING, task_name="add"))
    app.broker.publish(sig)
    worker = app.worker("plain", concurrency=1)
    thread = worker.launch_async()
    try:
        from machinery import AsyncResult

        assert AsyncResult(app.backend, sig.uuid, "add").get(timeout=10) == 3
    finally:
        worker.quit()
        thread.join(10)
