"""Google Cloud Pub/Sub broker for Machinery for Python: ``gcppubsub://<project>/<subscription>``.

The classes load on first use, so discovering the plugin's settings never imports google-cloud-pubsub.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .broker import PubSubBroker, PubSubDelivery
    from .settings import GCPPubSubSettings

__all__ = ["GCPPubSubSettings", "PubSubBroker", "PubSubDelivery"]


def __getattr__(name: str) -> Any:
    if name in ("PubSubBroker", "PubSubDelivery"):
        from . import broker

        return getattr(broker, name)
    if name == "GCPPubSubSettings":
        from .settings import GCPPubSubSettings

        return GCPPubSubSettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
