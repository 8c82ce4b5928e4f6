"""The plugin's settings: defaults here, overridden per URL (``memcache://h:11211?timeout=5``).

Go Machinery has no memcache settings (only the server list), so every field is this plugin's own.
Until the core's plugin-settings hook exists, :func:`settings_of` is the one seam that reads them:
``Config.memcache`` when an application sets it to a :class:`MemcacheSettings`, else the defaults.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from machinery.config import Config
from machinery.errors import ConfigError

__all__ = ["HASHINGS", "MIB", "MemcacheSettings", "settings_of"]

MIB = 1024 * 1024
#: ``gomemcache``: crc32 of the key modulo the server count (Go Machinery's client);
#: ``rendezvous``: pymemcache's ``HashClient`` default (highest random weight over murmur3).
HASHINGS = ("gomemcache", "rendezvous")


@dataclass(frozen=True)
class MemcacheSettings:
    """Settings of the memcache backend and lock. Each field is also a URL query parameter."""

    #: how a key picks its server on a multi-server URL (see :data:`HASHINGS`)
    hashing: str = "gomemcache"
    #: seconds to open a connection
    connect_timeout: float = 3.0
    #: seconds a command may take
    timeout: float = 3.0
    #: memcached's item size limit (its ``-I``, 1 MiB by default); larger records are refused here
    max_item_size: int = MIB
    #: first and longest sleep of :meth:`MemcacheBackend.wait`'s adaptive poll, in seconds
    poll_min: float = 0.002
    poll_max: float = 0.25
    #: connect with TLS (memcached ``-Z``); the server certificate is verified unless tls_verify=false
    tls: bool = False
    tls_verify: bool = True
    #: CA file to verify the server with (default: the system's), client certificate and key files
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    #: seconds trigger_chord waits while a Go worker holds a group's ``Lock`` flag
    go_lock_patience: float = 10.0

    def __post_init__(self) -> None:
        problems = list(_problems(self))
        if problems:
            raise ConfigError("memcache settings: " + "; ".join(problems))

    def with_options(self, options: Mapping[str, str], where: str) -> MemcacheSettings:
        """These settings with URL query ``options`` applied (``where`` names the redacted URL)."""
        known = {f.name: f for f in fields(self)}
        changes: dict[str, Any] = {}
        for name, text in options.items():
            if name not in known:
                raise ConfigError(
                    f"{where}: unknown option {name!r}; known options: {', '.join(sorted(known))}"
                )
            parse = _PARSERS[type(getattr(self, name))]
            try:
                changes[name] = parse(text)
            except ValueError:
                raise ConfigError(f"{where}: option {name}={text!r} is not a valid {_KINDS[parse]}") from None
        try:
            return replace(self, **changes)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def _problems(s: MemcacheSettings) -> list[str]:
    out: list[str] = []
    if s.hashing not in HASHINGS:
        out.append(f"hashing={s.hashing!r} must be one of {', '.join(HASHINGS)}")
    for name in ("connect_timeout", "timeout", "poll_min", "poll_max", "go_lock_patience"):
        value = getattr(s, name)
        if not math.isfinite(value) or value <= 0:
            out.append(f"{name}={value!r} must be a number of seconds > 0")
    if s.poll_min > s.poll_max:
        out.append(f"poll_min={s.poll_min} must not exceed poll_max={s.poll_max}")
    if s.max_item_size < 1024:
        out.append(f"max_item_size={s.max_item_size} must be at least 1024 bytes")
    if (s.tls_cert or s.tls_key) and not s.tls:
        out.append("tls_cert / tls_key need tls=true")
    if s.tls_key and not s.tls_cert:
        out.append("tls_key needs tls_cert")
    return out


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _parse_size(text: str) -> int:
    """Bytes, or with a k/m suffix as memcached's ``-I`` takes them (``2m``)."""
    lowered = text.strip().lower()
    factor = {"k": 1024, "m": MIB}.get(lowered[-1:], 1)
    number = lowered[:-1] if factor > 1 else lowered
    return int(number) * factor


_PARSERS: dict[type, Callable[[str], Any]] = {bool: _parse_bool, int: _parse_size, float: float, str: str}
_KINDS = {_parse_bool: "boolean (true/false)", _parse_size: "whole number", float: "number", str: "string"}


def settings_of(config: Config) -> MemcacheSettings:
    """The settings ``config`` carries for this plugin: ``config.memcache`` when it is a
    :class:`MemcacheSettings`, otherwise the defaults."""
    found = getattr(config, "memcache", None)
    return found if isinstance(found, MemcacheSettings) else MemcacheSettings()
