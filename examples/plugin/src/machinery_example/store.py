"""The "server" of this transport: one dict per store name, shared by every object of this process.

A real plugin has its client here instead (connection set-up, pools, retries); broker.py, backend.py
and lock.py only speak to it.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from dataclasses import dataclass, field

from machinery.signature import GroupMeta, TaskState

__all__ = ["Message", "Store", "next_id", "store_for"]


@dataclass
class Message:
    """One message. ``deliveries`` counts how often it was handed out (its lease's generation)."""

    id: int
    queue: str
    body: bytes
    deliveries: int = 0


@dataclass
class Store:
    """Everything of one ``example://NAME``; ``cond`` guards it and wakes waiting consumers."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    ready: dict[str, deque[Message]] = field(default_factory=dict)
    delayed: list[tuple[float, Message]] = field(default_factory=list)  # (due, message)
    leased: dict[int, tuple[Message, float, str]] = field(default_factory=dict)  # id -> (msg, until, owner)
    states: dict[str, tuple[TaskState, float]] = field(default_factory=dict)  # uuid -> (state, expires)
    groups: dict[str, tuple[GroupMeta, float]] = field(default_factory=dict)
    locks: dict[str, tuple[str, float]] = field(default_factory=dict)  # key -> (owner, expires)


_stores: dict[str, Store] = {}
_stores_lock = threading.Lock()
_ids = itertools.count(1)


def store_for(name: str) -> Store:
    """The store called ``name`` (created on first use)."""
    with _stores_lock:
        return _stores.setdefault(name, Store())


def next_id() -> int:
    return next(_ids)
