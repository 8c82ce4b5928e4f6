"""``gcppubsub://<project-id>/<subscription>`` (Go Machinery's form), parsed without any I/O.

The project is the URL's host; the path names the subscription that serves the default queue
(``Config.default_queue``). Other queues are consumed through subscriptions named by
:attr:`~.settings.PubSubSettings.subscription_name` (``{queue}`` by default). Query parameters
override settings for this URL: ``ack_deadline``, ``hold_window`` (seconds), ``create_missing``
(true/false), ``max_delivery_attempts``, ``message_ordering`` (true/false), ``subscription_name``
and ``dead_letter_topic`` (templates with ``{queue}``).
``PUBSUB_EMULATOR_HOST`` is honoured by the client library itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from machinery.errors import ConfigError
from machinery.redact import redact_url

__all__ = ["SCHEMES", "PubSubTarget", "check_resource_name", "parse_url"]

SCHEMES = ("gcppubsub",)
OPTION_PARAMS = frozenset(
    {
        "ack_deadline",
        "hold_window",
        "create_missing",
        "max_delivery_attempts",
        "message_ordering",
        "subscription_name",
        "dead_letter_topic",
    }
)

#: Pub/Sub's rule for topic and subscription ids: 3-255 characters, starting with a letter.
_RESOURCE_RE = re.compile(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")


def check_resource_name(name: str, what: str) -> str:
    """``name`` when Pub/Sub accepts it as a topic or subscription id, else a ConfigError saying why."""
    if not _RESOURCE_RE.fullmatch(name) or name.lower().startswith("goog"):
        raise ConfigError(
            f"{what} {name!r} is not a valid Pub/Sub name: 3-255 letters, digits or - _ . ~ + %, "
            "starting with a letter and not with 'goog'"
        )
    return name


@dataclass(frozen=True)
class PubSubTarget:
    """Where a ``gcppubsub://`` URL points."""

    project: str
    subscription: str
    options: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        return f"gcppubsub://{self.project}/{self.subscription}"


def parse_url(url: str) -> PubSubTarget:
    """Parse a ``gcppubsub://project/subscription[?option=value]`` URL (no I/O)."""
    shown = redact_url(url)
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES:
        raise ConfigError(f"{shown!r} is not a gcppubsub:// URL")
    project = parts.hostname or ""
    if not project:
        raise ConfigError(f"{shown!r} names no project: use gcppubsub://<project-id>/<subscription>")
    if parts.username or parts.password or parts.port:
        raise ConfigError(
            f"{shown!r} has credentials or a port: Pub/Sub takes neither in the URL "
            "(credentials come from Google's usual configuration; the emulator from PUBSUB_EMULATOR_HOST)"
        )
    subscription = parts.path.strip("/")
    if not subscription or "/" in subscription:
        raise ConfigError(f"{shown!r} must name one subscription: gcppubsub://<project-id>/<subscription>")
    check_resource_name(subscription, "the subscription")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - OPTION_PARAMS)
    if unknown:
        raise ConfigError(
            f"{shown!r}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(OPTION_PARAMS))}"
        )
    return PubSubTarget(project, subscription, options)
