"""machinery.events: the dataclasses' round trips, lost workers, the config section, the protocol check."""

from __future__ import annotations

import json

import pytest

from machinery.config import Config
from machinery.events import (
    TASK_EVENT_KINDS,
    SupportsEvents,
    TaskEvent,
    WorkerHeartbeat,
    events_store,
    no_events_text,
)
from machinery.transports.memory.backend import MemoryBackend
from machinery.transports.null import NullBackend


def beat(sent_at: float, interval: float = 5.0) -> WorkerHeartbeat:
    return WorkerHeartbeat("h:1:ab12", "h", 1, ("q",), 4, 1, 10, 1, "0.2.0", 100.0, sent_at, interval)


def test_task_event_round_trips_through_json() -> None:
    event = TaskEvent("failed", "u1", "add", "q", "h:1:ab12", 1.5, runtime=0.25, error="boom", group_uuid="g")
    data = json.loads(json.dumps(event.to_dict()))
    assert TaskEvent.from_dict(data) == event
    assert TaskEvent.from_dict({**data, "added_later": 1}) == event, "unknown keys must be ignored"
    with pytest.raises(KeyError, match="task_uuid"):
        TaskEvent.from_dict({k: v for k, v in data.items() if k != "task_uuid"})
    assert TASK_EVENT_KINDS[0] == "received" and "dead_lettered" in TASK_EVENT_KINDS


def test_heartbeat_round_trips_and_is_lost_after_three_intervals() -> None:
    b = beat(sent_at=1000.0)
    data = json.loads(json.dumps(b.to_dict()))
    assert data["queues"] == ["q"]
    assert WorkerHeartbeat.from_dict(data) == b
    assert not b.lost(now=1014.9)
    assert b.lost(now=1015.1)
    stopped = WorkerHeartbeat.from_dict({**data, "stopped": True})
    assert not stopped.lost(now=2000.0) and stopped.status == "stopped"
    older = {k: v for k, v in data.items() if k != "stopped"}  # a writer from before the field
    assert WorkerHeartbeat.from_dict(older) == b


def test_events_config_defaults_and_env() -> None:
    config = Config()
    assert (config.events.enabled, config.events.record_args, config.events.max_events) == (
        True,
        False,
        100_000,
    )
    assert config.worker.heartbeat_interval == 5.0
    env = Config.from_env(
        {
            "MACHINERY_EVENTS_ENABLED": "false",
            "MACHINERY_EVENTS_MAX_EVENTS": "10",
            "MACHINERY_WORKER_HEARTBEAT_INTERVAL": "0.5",
        }
    )
    assert (env.events.enabled, env.events.max_events, env.worker.heartbeat_interval) == (False, 10, 0.5)


def test_events_store_only_for_backends_that_keep_events() -> None:
    memory = MemoryBackend(Config(), "test_events_store")
    assert isinstance(memory, SupportsEvents) and events_store(memory) is memory
    null = NullBackend()
    assert events_store(null) is None
    assert "keeps no events" in no_events_text(null) and "NullBackend" in no_events_text(null)


def test_an_event_row_encodes_as_its_event_does() -> None:
    from machinery.events import event_row_json

    event = TaskEvent("succeeded", "t1", "add", "q", "w1", 1.5, runtime=0.25, group_uuid="g", trace_id="ab")
    row = tuple(event.to_dict().values())
    assert event_row_json(row) == event.to_json()
    huge = TaskEvent("received", "t2", "add", "q", "w1", 2.0, signature={"Args": [{"Value": 2**70}]})
    row = tuple(huge.to_dict().values())
    assert event_row_json(row) == huge.to_json()  # beyond orjson: the same fallback
