"""machinery-amqp: RabbitMQ broker and result backend for Machinery for Python (pika).

>>> from machinery import Config, Machinery
>>> app = Machinery(Config(broker="amqp://guest:guest@localhost:5672/",
...                        result_backend="amqp://guest:guest@localhost:5672/"))  # doctest: +SKIP
"""

from .backend import AMQPBackend
from .broker import AMQPBroker, AMQPDelivery
from .connection import AMQPAccessError, AMQPError, AMQPUnavailableError, UnroutableError

__version__ = "0.1.0"

__all__ = [
    "AMQPAccessError",
    "AMQPBackend",
    "AMQPBroker",
    "AMQPDelivery",
    "AMQPError",
    "AMQPUnavailableError",
    "UnroutableError",
]
