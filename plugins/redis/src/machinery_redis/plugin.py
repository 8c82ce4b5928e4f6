"""Entry point (group ``machinery``): ``redis://`` URLs (and ``rediss://``, ``redis+socket://``,
``redis+sentinel://``) build this package's broker, backend and lock; classes are imported on first use.

It also stores PENDING states and publishes in one round trip when the app's broker and backend are
both this package's, on the same server (``machinery_publish_with_states``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

from machinery.plugins import hookimpl, transport

from .url import SCHEMES

if TYPE_CHECKING:
    from machinery.backend import Backend
    from machinery.broker import Broker
    from machinery.signature import Signature, TaskState

    from .backend import RedisBackend
    from .broker import RedisBroker

__all__ = ["machinery_publish_with_states", "plugin"]

plugin = transport(
    SCHEMES,
    broker="machinery_redis.broker:RedisBroker",
    backend="machinery_redis.backend:RedisBackend",
    lock="machinery_redis.lock:RedisLock",
    settings="machinery_redis.settings:RedisSettings",
)


@hookimpl
def machinery_publish_with_states(
    broker: Broker, backend: Backend, signatures: Sequence[Signature], states: Sequence[TaskState]
) -> bool | None:
    """One pipeline for both, states first (a worker never sees a message whose PENDING state is not
    written yet); None when the pair is not a Redis broker and backend on one server."""
    broker_class, backend_class = _classes()
    if not isinstance(broker, broker_class) or not isinstance(backend, backend_class):
        return None
    return broker.publish_with_states(signatures, states, backend) or None


@functools.cache
def _classes() -> tuple[type[RedisBroker], type[RedisBackend]]:
    # imported on the first send, not when plugins are listed; cached: this runs on every send_task
    from .backend import RedisBackend
    from .broker import RedisBroker

    return RedisBroker, RedisBackend
