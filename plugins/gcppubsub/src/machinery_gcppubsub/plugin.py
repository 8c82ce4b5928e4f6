"""Entry point (group ``machinery``): ``gcppubsub://`` URLs build this package's broker, and its
settings section joins ``Config``; the classes are imported on first use (``transport()``)."""

from __future__ import annotations

from machinery.plugins import transport

from .url import SCHEMES

__all__ = ["plugin"]

plugin = transport(
    SCHEMES,
    broker="machinery_gcppubsub.broker:PubSubBroker",
    settings="machinery_gcppubsub.settings:GCPPubSubSettings",
)
