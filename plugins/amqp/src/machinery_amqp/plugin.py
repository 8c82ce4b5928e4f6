"""Entry point (group ``machinery``): ``amqp://`` and ``amqps://`` URLs.

Such URLs (or failover lists joined by ``multiple_broker_separator``) build an
:class:`~machinery_amqp.AMQPBroker` or :class:`~machinery_amqp.AMQPBackend`, imported on first use.
Nothing connects here: the first publish, consume or state access does.

A producer's send on an AMQP broker hands its PENDING state and message to the broker's outbox
(``machinery_publish_with_states``): its I/O thread stores the states, then publishes (README.md,
"Publisher confirms").
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

from machinery.plugins import hookimpl, transport

if TYPE_CHECKING:
    from machinery.backend import Backend
    from machinery.broker import Broker
    from machinery.signature import Signature, TaskState

    from .broker import AMQPBroker

__all__ = ["SCHEMES", "machinery_publish_with_states", "plugin"]

SCHEMES = ("amqp", "amqps")

plugin = transport(
    SCHEMES,
    broker="machinery_amqp.broker:AMQPBroker",
    backend="machinery_amqp.backend:AMQPBackend",
    settings="machinery_amqp.settings:AMQPSettings",
)


@hookimpl
def machinery_publish_with_states(
    broker: Broker, backend: Backend, signatures: Sequence[Signature], states: Sequence[TaskState]
) -> bool | None:
    """States and messages of a producer's send through the AMQP broker's outbox (states first); None
    for another broker, in a worker, or where the broker waits for each confirm."""
    if not isinstance(broker, _broker_class()):
        return None
    return broker.publish_with_states(signatures, states, backend) or None


@functools.cache
def _broker_class() -> type[AMQPBroker]:
    # imported on the first send, not when plugins are listed; cached: this runs on every send_task
    from .broker import AMQPBroker

    return AMQPBroker
