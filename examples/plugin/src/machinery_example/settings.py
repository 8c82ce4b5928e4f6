"""The plugin's settings: each one written once, with its default, its URL parameter and its check.

Today a URL parameter is the only way to set them (``example://NAME?lease=5``). When the core's
plugin-owned settings land (core/README.md, "Settings"), this class becomes the plugin's declared
section and ``ExampleSettings.of(config)`` reads it from the Config (env and YAML included).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from machinery.config import Config
from machinery.errors import ConfigError
from machinery.redact import redact_url

__all__ = ["ExampleSettings"]


@dataclass(frozen=True)
class ExampleSettings:
    """Settings of ``example://`` (URL parameters of the same name override them)."""

    #: seconds a consumed message stays leased without renewal: a consumer that vanishes without
    #: closing (a killed process, in a real transport) gets its messages delivered again after this
    lease: float = 30.0
    #: seconds between lease renewals of live deliveries; below ``lease`` (default: a third of it)
    renew: float = 10.0

    @classmethod
    def of(cls, config: Config | None) -> ExampleSettings:
        """The settings a Config holds for this plugin (the defaults until the core's settings hook)."""
        return cls()

    def with_query(self, query: Mapping[str, list[str]], url: str) -> ExampleSettings:
        """These settings overridden by the URL's parameters; a ConfigError names a bad one."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(query) - known)
        if unknown:
            raise ConfigError(
                f"{redact_url(url)}: unknown parameter(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        values = {name: _seconds(name, query[name][-1], url) for name in known if name in query}
        if "lease" in values and "renew" not in values:
            values["renew"] = min(self.renew, values["lease"] / 3)
        settings = replace(self, **values)
        if settings.renew >= settings.lease:
            raise ConfigError(
                f"{redact_url(url)}: renew={settings.renew:g} must be below lease={settings.lease:g} "
                "(a lease renewed after it ran out is lost)"
            )
        return settings


def _seconds(name: str, text: str, url: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{redact_url(url)}: {name} must be a positive number of seconds, not {text!r}")
    return value
