"""The ``amqp`` settings section: Machinery's ``AMQPConfig`` fields, declared once.

Handed to the core through the ``machinery_settings()`` hook (plugin.py): ``Config.from_env`` reads
``AMQP_*`` (and Go's struct-prefixed ``AMQP_AMQP_*``), ``Config.from_yaml`` reads ``amqp:``. Code reads them
typed with ``AMQPSettings.of(config)`` (``config.amqp`` works too). This module imports nothing from pika.
All need a restart to change: the exchange, queues, bindings and QoS are declared on connect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from machinery.settings import Section, at_least, setting

__all__ = ["AMQPSettings"]


@dataclass(repr=False)
class AMQPSettings(Section):
    """RabbitMQ settings (Machinery's ``AMQPConfig``; ``Config.amqp``). See README.md, "Settings"."""

    name = "amqp"

    exchange: str = setting("machinery_exchange", go_env="AMQP_EXCHANGE")
    exchange_type: str = setting("direct", go_env="AMQP_EXCHANGE_TYPE")
    #: Arguments for ``queue.declare`` of task queues, e.g. ``{"x-max-priority": 10}``. In the environment
    #: ``k:v,k:v`` or JSON; values that look like numbers or booleans are converted.
    queue_declare_args: dict[str, Any] = setting(factory=dict, go_env="AMQP_QUEUE_DECLARE_ARGS")
    #: Arguments for ``queue.bind``, e.g. ``{"x-match": "any", "image-type": "png"}`` for a headers exchange.
    #: In the environment the values stay strings (as in Go).
    queue_binding_args: dict[str, Any] = setting(
        factory=dict, go_env="AMQP_QUEUE_BINDING_ARGS", kind="binding_args"
    )
    binding_key: str = setting("machinery_task", go_env="AMQP_BINDING_KEY")
    #: Upper bound of ``basic.qos``; 0 (the default) follows the worker's free slots. Go's default is 3,
    #: which let an 8-thread worker run only 3 tasks at once: the design's prefetch is the free slots.
    prefetch_count: int = setting(
        0, go_env="AMQP_PREFETCH_COUNT", check=at_least(0, " (0 means: follow the worker's free slots)")
    )
    auto_delete: bool = setting(False, go_env="AMQP_AUTO_DELETE")
    delayed_queue: str = setting("", go_env="AMQP_DELAYED_QUEUE")
    #: Every publish waits for its publisher confirm, also a producer's (by default a producer's publish
    #: returns once the message is handed to the I/O thread; ``flush()``/``close()`` wait: README.md).
    wait_for_confirms: bool = setting(False)
