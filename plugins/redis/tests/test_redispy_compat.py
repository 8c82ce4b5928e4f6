"""The redis-py internals machinery_redis relies on (all in machinery_redis._redispy) are present.

No server needed: this fails loudly, naming what changed, when an installed redis-py is incompatible.
"""

from __future__ import annotations

import logging

import pytest
import redis
from redis.cluster import NodesManager
from redis.connection import AbstractConnection
from redis.exceptions import ConnectionError
from redis.retry import Retry

from machinery_redis import _redispy


def test_installed_redis_py_has_every_internal_we_use() -> None:
    found = _redispy.problems()
    assert not found, f"redis-py {redis.__version__} is incompatible with machinery-redis: " + "; ".join(
        found
    )


def test_a_missing_internal_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(NodesManager, "get_node_from_slot")
    assert "NodesManager.get_node_from_slot is missing" in _redispy.problems()


def test_a_changed_signature_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    def send_packed_command(self: object, payload: object) -> None:
        return None

    monkeypatch.setattr(AbstractConnection, "send_packed_command", send_packed_command)
    assert "Connection.send_packed_command no longer takes command, check_health" in _redispy.problems()


def test_an_incompatible_redis_py_is_reported_at_import(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delattr(NodesManager, "initialize")
    with caplog.at_level(logging.WARNING, logger="machinery.redis"):
        _redispy._check()
    assert "NodesManager.initialize is missing" in caplog.text and redis.__version__ in caplog.text


def test_a_new_retry_parameter_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    def call_with_retry(self: object, do: object, fail: object, deadline: float = 0.0) -> None:
        return None

    monkeypatch.setattr(Retry, "call_with_retry", call_with_retry)
    assert "Retry.call_with_retry takes deadline, which RetryLoop does not" in _redispy.problems()


def test_retry_loop_follows_both_redis_py_contracts() -> None:
    calls: list[tuple[object, ...]] = []
    outcomes: list[BaseException | str] = [ConnectionError("down"), ConnectionError("down"), "ok"]

    def do() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def on_error(error: Exception, failures: int) -> float | None:
        calls.append(("error", failures))
        return 0.0

    loop = _redispy.RetryLoop(
        1, permanent=lambda e: False, on_error=on_error, on_success=lambda: calls.append(("ok",))
    )
    failed: list[tuple[object, ...]] = []
    assert loop.call_with_retry(do, lambda *a: failed.append(a), with_failure_count=True) == "ok"
    assert [a[1] for a in failed] == [1, 2], "redis-py 8 handlers get the failure count"
    assert calls == [("error", 1), ("error", 2), ("ok",)]

    refused = _redispy.RetryLoop(1, permanent=lambda e: True, on_error=on_error, on_success=lambda: None)
    with pytest.raises(ConnectionError):
        refused.call_with_retry(lambda: (_ for _ in ()).throw(ConnectionError("no")), failed.append)
    assert len(failed) == 2, "a permanent error is raised at once, without the failure handler"


def test_a_reader_without_its_sentinel_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from redis._parsers.hiredis import _HiredisParser

    def on_connect(self: object, connection: object) -> None:
        self._reader = object()  # type: ignore[attr-defined]

    monkeypatch.setattr(_HiredisParser, "on_connect", on_connect)
    assert "_HiredisParser no longer keeps a hiredis Reader built with notEnoughData" in _redispy.problems()


class _Pool:
    """A stand-in pool that hands out numbered connections and records what comes back."""

    def __init__(self) -> None:
        self.made = 0
        self.released: list[_Conn] = []

    def get_connection(self) -> _Conn:
        self.made += 1
        return _Conn(self.made)

    def release(self, conn: _Conn) -> None:
        self.released.append(conn)


class _Conn:
    def __init__(self, number: int) -> None:
        self.number = number
        self.disconnected = False

    def disconnect(self) -> None:
        self.disconnected = True


def test_held_connections_are_reused_without_going_back_to_the_pool() -> None:
    pool = _Pool()
    held = _redispy.HeldConnections(pool)
    first = held.take()
    held.keep(first)
    assert held.take() is first and pool.made == 1 and pool.released == []
    second = held.take()  # the first is in use: a new one
    assert second is not first and pool.made == 2


def test_a_failed_held_connection_is_disconnected_and_given_back() -> None:
    pool = _Pool()
    held = _redispy.HeldConnections(pool)
    conn = held.take()
    held.drop(conn)
    assert conn.disconnected and pool.released == [conn]
    assert held.take() is not conn


def test_a_failover_gives_the_idle_held_connections_back_disconnected() -> None:
    pool = _Pool()
    held = _redispy.HeldConnections(pool, epoch=0)
    conn = held.take(0)
    held.keep(conn)
    fresh = held.take(1)  # the epoch grew: a Sentinel failover was noticed
    assert fresh is not conn and conn.disconnected and pool.released == [conn]


def test_a_forked_child_never_uses_or_closes_the_parents_held_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    pool = _Pool()
    held = _redispy.HeldConnections(pool)
    conn = held.take()
    held.keep(conn)
    monkeypatch.setattr(os, "getpid", lambda: -1)  # as in a child
    fresh = held.take()
    assert fresh is not conn and not conn.disconnected and pool.released == []


def test_a_borrowed_connection_goes_back_to_the_users_pool_after_each_round() -> None:
    pool = _Pool()
    borrowed = _redispy.BorrowedConnections(pool)
    conn = borrowed.take()
    borrowed.keep(conn)
    assert pool.released == [conn] and not conn.disconnected
    failed = borrowed.take()
    borrowed.drop(failed)
    assert failed is not conn and failed.disconnected and pool.released == [conn, failed]
