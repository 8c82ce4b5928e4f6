"""machinery-amqp: RabbitMQ broker and result backend for Machinery for Python (pika).

>>> from machinery import Config, Machinery
>>> app = Machinery(Config(broker="amqp://guest:guest@localhost:5672/",
...                        result_backend="amqp://guest:guest@localhost:5672/"))  # doctest: +SKIP

The classes are imported on first use, so loading the entry point (to list schemes or settings) does not
import pika.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backend import AMQPBackend
    from .broker import AMQPBroker, AMQPDelivery
    from .connection import AMQPAccessError, AMQPError, AMQPUnavailableError, UnroutableError
    from .settings import AMQPSettings

__version__ = "0.1.0"

__all__ = [
    "AMQPAccessError",
    "AMQPBackend",
    "AMQPBroker",
    "AMQPDelivery",
    "AMQPError",
    "AMQPSettings",
    "AMQPUnavailableError",
    "UnroutableError",
]

_HOMES = {
    "AMQPAccessError": ".connection",
    "AMQPBackend": ".backend",
    "AMQPBroker": ".broker",
    "AMQPDelivery": ".broker",
    "AMQPError": ".connection",
    "AMQPSettings": ".settings",
    "AMQPUnavailableError": ".connection",
    "UnroutableError": ".connection",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home, __name__), name)
