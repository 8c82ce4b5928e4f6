"""The plugin's settings: ``Config.gcppubsub`` plus per-URL query overrides.

============================  =========================  ===========================================
setting                       default                    meaning
============================  =========================  ===========================================
``max_extension``             600 s                      total time a running message's ack deadline
                                                         is extended (Go's ``MaxExtension``)
``ack_deadline``              30 s                       ack deadline of created subscriptions, and the
                                                         lease a consumed message starts with
``hold_window``               600 s                      a not-yet-due message is held (ack deadline
                                                         set to its ETA) up to this long; past it, it
                                                         is acked and published again (a fresh message)
``create_missing``            true                       create missing topics and subscriptions
``max_delivery_attempts``     100                        the subscriptions' dead-letter policy (5-100)
``message_ordering``          false                      create subscriptions with ordering keys on
``subscription_name``         ``{queue}``                the subscription of a queue other than the
                                                         default one (the URL names that one)
``dead_letter_topic``         ``{queue}-dead-letters``   where ``nack(requeue=False)`` publishes
``publisher``/``subscriber``  built from the environment ready clients (``google.cloud.pubsub_v1``)
============================  =========================  ===========================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from machinery.config import Config
from machinery.errors import ConfigError

__all__ = ["MAX_ACK_DEADLINE", "PubSubSettings"]

#: Pub/Sub's limit for one ack deadline (seconds).
MAX_ACK_DEADLINE = 600


@dataclass(frozen=True)
class PubSubSettings:
    """Validated settings of one broker."""

    max_extension: float = 600.0
    ack_deadline: int = 30
    hold_window: float = float(MAX_ACK_DEADLINE)
    create_missing: bool = True
    max_delivery_attempts: int = 100
    message_ordering: bool = False
    subscription_name: str = "{queue}"
    dead_letter_topic: str = "{queue}-dead-letters"
    publisher: Any = None
    subscriber: Any = None

    @classmethod
    def of(cls, config: Config, options: Mapping[str, str] | None = None) -> PubSubSettings:
        """The settings for ``config``, with a URL's query ``options`` taking precedence."""
        section = config.gcppubsub
        opts = dict(options or {})
        settings = cls(
            max_extension=float(section.max_extension),
            ack_deadline=int(_number(opts, "ack_deadline", cls.ack_deadline)),
            hold_window=_number(opts, "hold_window", cls.hold_window),
            create_missing=_flag(opts, "create_missing", cls.create_missing),
            max_delivery_attempts=int(_number(opts, "max_delivery_attempts", cls.max_delivery_attempts)),
            message_ordering=_flag(opts, "message_ordering", cls.message_ordering),
            subscription_name=opts.get("subscription_name", cls.subscription_name),
            dead_letter_topic=opts.get("dead_letter_topic", cls.dead_letter_topic),
            publisher=getattr(section, "publisher", None),
            subscriber=getattr(section, "subscriber", None),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if not 1 <= self.ack_deadline <= MAX_ACK_DEADLINE:
            raise ConfigError(f"gcppubsub ack_deadline must be 1-600 seconds, got {self.ack_deadline}")
        if not 5 <= self.max_delivery_attempts <= 100:
            raise ConfigError(
                "gcppubsub max_delivery_attempts must be 5-100 (Pub/Sub's range), "
                f"got {self.max_delivery_attempts}"
            )
        if not 0 < self.hold_window <= MAX_ACK_DEADLINE:
            raise ConfigError(
                f"gcppubsub hold_window must be > 0 and <= 600 seconds, got {self.hold_window:g}"
            )
        for name in ("subscription_name", "dead_letter_topic"):
            if "{queue}" not in getattr(self, name):
                raise ConfigError(f"gcppubsub {name} must contain {{queue}}, got {getattr(self, name)!r}")


def _number(options: Mapping[str, str], name: str, default: float) -> float:
    raw = options.get(name)
    if raw is None:
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConfigError(f"gcppubsub URL parameter {name} must be a number of seconds, got {raw!r}")
    return value


def _flag(options: Mapping[str, str], name: str, default: bool) -> bool:
    raw = options.get(name)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"gcppubsub URL parameter {name} must be true or false, got {raw!r}")
