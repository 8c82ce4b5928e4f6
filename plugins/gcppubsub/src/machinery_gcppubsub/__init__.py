"""Google Cloud Pub/Sub broker for Machinery for Python: ``gcppubsub://<project>/<subscription>``."""

from .broker import PubSubBroker, PubSubDelivery
from .settings import PubSubSettings
from .url import PubSubTarget, parse_url

__all__ = ["PubSubBroker", "PubSubDelivery", "PubSubSettings", "PubSubTarget", "parse_url"]
