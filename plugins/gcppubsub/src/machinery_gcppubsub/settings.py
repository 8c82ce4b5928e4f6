"""The ``gcppubsub`` settings section (``Config.gcppubsub``), declared once and handed to the core
through the ``machinery_settings()`` hook. A URL's query parameters override them for that broker
(``Section.with_query``).

============================  =========================  ===========================================
setting                       default                    meaning
============================  =========================  ===========================================
``max_extension``             600 s                      total time a running message's ack deadline
                                                         is extended (Go's ``MaxExtension``)
``ack_deadline``              30 s                       the lease a pulled message starts with and
                                                         keeps while its task runs (renewed); also the
                                                         ack deadline of created subscriptions (>= 10)
``hold_window``               600 s                      a not-yet-due message is held (ack deadline
                                                         set to its ETA) up to this long; past it, it
                                                         is acked and published again (a fresh message)
``create_missing``            true                       create missing topics and subscriptions
``max_delivery_attempts``     100                        the subscriptions' dead-letter policy (5-100)
``message_ordering``          false                      create subscriptions with ordering keys on
``subscription_name``         ``{queue}``                the subscription of a queue other than the
                                                         default one (the URL names that one)
``dead_letter_topic``         ``{queue}-dead-letters``   where ``nack(requeue=False)`` publishes
``publisher_client``,         built from the environment ready ``google.cloud.pubsub_v1`` clients
``subscriber_client``
                                                         (code only; Go's ``client`` is not used)
============================  =========================  ===========================================

Environment: ``MACHINERY_GCPPUBSUB_<NAME>``; YAML: ``gcppubsub: {<name>: ...}``. All need a restart
(a broker reads them once). This module imports nothing from google-cloud-pubsub: listing settings
never loads the broker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from machinery.settings import Check, Section, at_least, between, setting

__all__ = ["MAX_ACK_DEADLINE", "GCPPubSubSettings"]

#: Pub/Sub's limit for one ack deadline (seconds).
MAX_ACK_DEADLINE = 600

_QUEUE_TEMPLATE = Check(lambda v: "{queue}" in v, "must contain {queue}")


@dataclass(repr=False)
class GCPPubSubSettings(Section):
    """Google Cloud Pub/Sub settings (``Config.gcppubsub``). See the table in the module docs."""

    name = "gcppubsub"

    #: Go's ``Client``; not used by this plugin (Pub/Sub's Python library has two clients: see below).
    client: Any = None
    max_extension: float = setting(600.0, check=at_least(0, " seconds"))
    ack_deadline: int = setting(30, check=between(1, MAX_ACK_DEADLINE, " seconds"))
    hold_window: float = setting(
        float(MAX_ACK_DEADLINE), check=between(1, MAX_ACK_DEADLINE, " seconds (Pub/Sub's limit)")
    )
    create_missing: bool = setting(True)
    max_delivery_attempts: int = setting(100, check=between(5, 100, " (Pub/Sub's range)"))
    message_ordering: bool = setting(False)
    subscription_name: str = setting("{queue}", check=_QUEUE_TEMPLATE)
    dead_letter_topic: str = setting("{queue}-dead-letters", check=_QUEUE_TEMPLATE)
    #: A ready ``google.cloud.pubsub_v1.PublisherClient`` (code only).
    publisher_client: Any = None
    #: A ready ``google.cloud.pubsub_v1.SubscriberClient`` (code only).
    subscriber_client: Any = None
