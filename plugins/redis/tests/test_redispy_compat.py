"""The redis-py internals machinery_redis relies on (all in machinery_redis._redispy) are present.

No server needed: this fails loudly, naming what changed, when an installed redis-py is incompatible.
"""

from __future__ import annotations

import logging

import pytest
import redis
from redis.cluster import NodesManager
from redis.connection import AbstractConnection

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
