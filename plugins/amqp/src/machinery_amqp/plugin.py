"""Entry point (group ``machinery``): ``amqp://`` and ``amqps://`` URLs.

Such URLs (or failover lists joined by ``multiple_broker_separator``) build an
:class:`~machinery_amqp.AMQPBroker` or :class:`~machinery_amqp.AMQPBackend`, imported on first use.
Nothing connects here: the first publish, consume or state access does.
"""

from __future__ import annotations

from machinery.plugins import transport

__all__ = ["SCHEMES", "plugin"]

SCHEMES = ("amqp", "amqps")

plugin = transport(
    SCHEMES,
    broker="machinery_amqp.broker:AMQPBroker",
    backend="machinery_amqp.backend:AMQPBackend",
    settings="machinery_amqp.settings:AMQPSettings",
)
