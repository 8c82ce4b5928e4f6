"""The ``memcache`` settings section: this plugin's own (Go Machinery has none besides the server list).

Declared once here and handed to the core through the ``machinery_settings()`` hook (plugin.py), so
``Config.from_env`` reads ``MACHINERY_MEMCACHE_<NAME>``, ``Config.from_yaml`` reads ``memcache:`` and
``Config.validate`` checks them. A URL's query (``memcache://h:11211?timeout=5``) overrides them for the
objects built from that URL (``Section.with_query``). This module imports nothing from
pymemcache: listing settings never loads the client.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from machinery.config import Config
from machinery.errors import ConfigError
from machinery.settings import Check, Section, Spec, above, at_least, setting

__all__ = ["HASHINGS", "MIB", "MemcacheSettings", "settings_of"]

MIB = 1024 * 1024
#: ``gomemcache``: crc32 of the key modulo the server count (Go Machinery's client);
#: ``rendezvous``: pymemcache's ``HashClient`` default (highest random weight over murmur3).
HASHINGS = ("gomemcache", "rendezvous")
_SECONDS = above(0, " seconds")


@dataclass(repr=False)
class MemcacheSettings(Section):
    """Settings of the memcache backend and lock (``Config.memcache``). See README.md, "Settings"."""

    name = "memcache"

    #: How a key picks its server on a multi-server URL (see :data:`HASHINGS`).
    hashing: str = setting(
        "gomemcache", check=Check(lambda v: v in HASHINGS, "must be gomemcache (Go's) or rendezvous")
    )
    #: Seconds to open a connection, and seconds a command may take.
    connect_timeout: float = setting(3.0, check=_SECONDS)
    timeout: float = setting(3.0, check=_SECONDS)
    #: The servers' item size limit (memcached ``-I``, 1 MiB by default); larger records are refused here.
    max_item_size: int = setting(MIB, check=at_least(1024, " bytes"))
    #: First and longest sleep of ``wait()``'s adaptive poll, in seconds.
    poll_min: float = setting(0.002, check=_SECONDS)
    poll_max: float = setting(0.25, check=_SECONDS)
    #: Connect with TLS (memcached ``-Z``); the server's certificate is verified unless tls_verify is off.
    tls: bool = setting(False)
    tls_verify: bool = setting(True)
    #: CA file to verify the server with (default: the system's), client certificate and key files.
    tls_ca: str = setting("")
    tls_cert: str = setting("")
    tls_key: str = setting("")
    #: Seconds trigger_chord waits while a Go worker holds a group's ``Lock`` flag.
    go_lock_patience: float = setting(10.0, check=_SECONDS)

    def problems(self, valid: AbstractSet[str]) -> Iterable[str]:
        if {"poll_min", "poll_max"} <= valid and self.poll_min > self.poll_max:
            yield (
                f"memcache.poll_min ({self.poll_min:g}) must not exceed memcache.poll_max ({self.poll_max:g})"
            )
        if (self.tls_cert or self.tls_key) and not self.tls:
            yield "memcache.tls_cert / memcache.tls_key need memcache.tls = true"
        if self.tls_key and not self.tls_cert:
            yield "memcache.tls_key needs memcache.tls_cert"

    def parse_option(self, spec: Spec, text: str) -> Any:
        """URL query text for ``spec``; ``max_item_size`` also takes memcached's ``-I`` suffixes (``2m``)."""
        if spec.name == "max_item_size":
            return _parse_size(text)
        return super().parse_option(spec, text)


def _parse_size(text: str) -> int:
    """Bytes, or with a k/m suffix as memcached's ``-I`` takes them (``2m``)."""
    lowered = text.strip().lower()
    factor = {"k": 1024, "m": MIB}.get(lowered[-1:], 1)
    return int(lowered[:-1] if factor > 1 else lowered) * factor


def settings_of(config: Config) -> MemcacheSettings:
    """``config.memcache`` (the defaults when this plugin's section is not registered in ``config``,
    e.g. a Config built before the plugin was installed)."""
    try:
        return MemcacheSettings.of(config)
    except (AttributeError, ConfigError):
        return MemcacheSettings()
