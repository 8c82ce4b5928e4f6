"""Hook implementations registered under the ``machinery`` entry-point group (``amqp``).

``amqp://`` and ``amqps://`` URLs (or failover lists joined by ``multiple_broker_separator``) build
an :class:`~machinery_amqp.AMQPBroker` or :class:`~machinery_amqp.AMQPBackend`. Nothing connects
here: the first publish, consume or state access does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from machinery.plugins import SchemeRow, hookimpl, scheme_of

if TYPE_CHECKING:
    from machinery.backend import Backend
    from machinery.broker import Broker
    from machinery.config import Config
    from machinery.settings import Section

DISTRIBUTION = "machinery-amqp"
SCHEMES = ("amqp", "amqps")


@hookimpl
def machinery_schemes() -> list[SchemeRow]:
    return [SchemeRow(scheme, kind, DISTRIBUTION) for scheme in SCHEMES for kind in ("broker", "backend")]


@hookimpl
def machinery_settings() -> list[type[Section]]:
    from .settings import AMQPSettings  # the settings module only: listing settings never loads the broker

    return [AMQPSettings]


@hookimpl
def machinery_broker(url: str, config: Config) -> Broker | None:
    if scheme_of(url) not in SCHEMES:
        return None
    from .broker import AMQPBroker

    return AMQPBroker.from_url(url, config)


@hookimpl
def machinery_backend(url: str, config: Config) -> Backend | None:
    if scheme_of(url) not in SCHEMES:
        return None
    from .backend import AMQPBackend

    return AMQPBackend.from_url(url, config)
