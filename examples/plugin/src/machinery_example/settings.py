"""The ``example`` settings section (``Config.example``): each setting declared once, with its default,
its check and whether a live reload may change it, and handed to the core through the
``machinery_settings()`` hook (plugin.py). The core derives the rest: ``MACHINERY_EXAMPLE_LEASE`` in the
environment, ``example: {lease: 5}`` in YAML, ``Config.validate``, a ``repr`` without secrets. A URL's
query parameters override a setting for the objects built from that URL (``example://jobs?lease=2``).

This module imports nothing heavy: the core imports it to list settings, before any URL is used.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from machinery.config import Config
from machinery.errors import ConfigError
from machinery.redact import redact_url
from machinery.settings import Section, above, setting

__all__ = ["ExampleSettings"]


@dataclass(repr=False)  # Section's repr, which never shows a secret
class ExampleSettings(Section):
    """Settings of ``example://`` (``Config.example``; URL parameters of the same name override them)."""

    name = "example"

    #: Seconds a consumed message stays leased without renewal: a consumer that vanishes without closing
    #: (a killed process, in a real transport) gets its messages delivered again after this.
    lease: float = setting(30.0, check=above(0, " seconds"))
    #: Seconds between renewals of the leases of live deliveries; below ``lease``. Read by each renewal,
    #: so a live reload may change it.
    renew: float = setting(10.0, reload=True, check=above(0, " seconds"))

    @classmethod
    def of_config(cls, config: Config | None) -> ExampleSettings:
        """The section of ``config`` (the defaults without a config, or when the plugin's settings hook
        was not loaded into it: a plugin registered by hand after the Config was built)."""
        if config is None or not isinstance(getattr(config, cls.name, None), cls):
            return cls()
        return cls.of(config)

    def problems(self, valid: AbstractSet[str]) -> Iterable[str]:
        if {"lease", "renew"} <= valid and self.renew >= self.lease:
            yield (
                f"example.renew ({self.renew:g}) must be below example.lease ({self.lease:g}): a lease "
                "renewed after it ran out is lost"
            )

    def with_query(self, query: Mapping[str, list[str]], url: str) -> ExampleSettings:
        """These settings overridden by the URL's parameters and checked again; a ConfigError names the
        redacted URL and what is wrong."""
        known = {spec.path[-1] for spec in self.specs()}
        unknown = sorted(set(query) - known)
        if unknown:
            raise ConfigError(
                f"{redact_url(url)}: unknown parameter(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        changes = {name: _seconds(name, query[name][-1], url) for name in known if name in query}
        if "lease" in changes and "renew" not in changes:
            changes["renew"] = min(self.renew, changes["lease"] / 3)  # keep renewing well inside the lease
        merged = dataclasses.replace(self, **changes)
        problems = [
            f"{spec.path[-1]} {spec.check.requirement}"
            for spec in merged.specs()
            if spec.check is not None and not spec.check.ok(getattr(merged, spec.path[-1]))
        ]
        problems += merged.problems(known)
        if problems:
            raise ConfigError(f"{redact_url(url)}: {'; '.join(problems)}")
        return merged


def _seconds(name: str, text: str, url: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConfigError(f"{redact_url(url)}: {name} must be a number of seconds, not {text!r}")
    return value
