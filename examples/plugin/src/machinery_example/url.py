"""``example://NAME[?lease=SECONDS&renew=SECONDS]``: parsed once, without I/O, errors redacted."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from machinery.config import Config
from machinery.errors import ConfigError
from machinery.redact import redact_url

from .settings import ExampleSettings

__all__ = ["SCHEMES", "ExampleTarget", "parse_url"]

#: the URL schemes this plugin serves (plugin.py registers them)
SCHEMES = ("example",)


@dataclass(frozen=True)
class ExampleTarget:
    """What a URL names: the store (objects with the same name share it) and the settings."""

    name: str
    settings: ExampleSettings


def parse_url(url: str, config: Config | None = None) -> ExampleTarget:
    """Parse ``url``; a ConfigError (naming the redacted URL) says what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES:
        raise ConfigError(f"{redact_url(url)}: not an example:// URL")
    name = (parts.netloc + parts.path).strip("/")
    if not name:
        raise ConfigError(f"{redact_url(url)}: name the store, e.g. example://jobs")
    query = parse_qs(parts.query, keep_blank_values=True)
    return ExampleTarget(name, ExampleSettings.of_config(config).with_query(query, url))
