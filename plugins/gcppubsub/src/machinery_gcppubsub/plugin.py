"""Entry point (group ``machinery``): ``gcppubsub://`` URLs build this package's broker."""

from __future__ import annotations

from typing import TYPE_CHECKING

from machinery.plugins import SchemeRow, hookimpl, scheme_of

from .url import SCHEMES

if TYPE_CHECKING:
    from machinery.broker import Broker
    from machinery.config import Config
    from machinery.settings import Section

DISTRIBUTION = "machinery-gcppubsub"


@hookimpl
def machinery_schemes() -> list[SchemeRow]:
    return [SchemeRow(scheme, "broker", DISTRIBUTION) for scheme in SCHEMES]


@hookimpl
def machinery_settings() -> list[type[Section]]:
    from .settings import GCPPubSubSettings  # the settings module only: never loads the broker

    return [GCPPubSubSettings]


@hookimpl
def machinery_broker(url: str, config: Config) -> Broker | None:
    if scheme_of(url) not in SCHEMES:
        return None
    from .broker import PubSubBroker

    return PubSubBroker.from_url(url, config)
