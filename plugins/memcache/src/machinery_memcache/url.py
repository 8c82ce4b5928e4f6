"""``memcache://`` URLs: Go Machinery's server list plus this plugin's options. Parsing does no I/O.

- ``memcache://host:11211`` (port 11211 when omitted), ``memcache://[::1]:11211``
- ``memcache://h1:11211,h2:11211``: a cluster; each key lives on one server, picked as Go's
  gomemcache does (:mod:`machinery_memcache.client`). The order matters: list the servers in the same
  order everywhere (Go workers included), and a server listed twice gets twice the keys, as in Go.
- ``memcache:///run/memcached.sock``: one server on a unix socket.
- ``?option=value&...``: any :class:`~machinery_memcache.settings.MemcacheSettings` field, e.g.
  ``?hashing=rendezvous``, ``?tls=true&tls_ca=/etc/ssl/ca.pem``, ``?timeout=5``; it wins over the
  ``memcache`` section of the Config (env ``MACHINERY_MEMCACHE_<NAME>``, YAML ``memcache:``).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from machinery.errors import ConfigError
from machinery.redact import redact_url

from .settings import MemcacheSettings

__all__ = ["DEFAULT_PORT", "SCHEMES", "MemcacheTarget", "Server", "parse_url"]

SCHEMES = ("memcache",)
DEFAULT_PORT = 11211
_FORM = "use memcache://host:11211 or memcache://host1:11211,host2:11211 (or memcache:///path/to.sock)"


@dataclass(frozen=True)
class Server:
    """One memcached server: a TCP host and port, or a unix socket path (``port`` 0)."""

    host: str
    port: int = DEFAULT_PORT

    @property
    def is_socket(self) -> bool:
        return self.port == 0

    def __str__(self) -> str:
        if self.is_socket:
            return self.host
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class MemcacheTarget:
    """A parsed ``memcache://`` URL: the servers in URL order and the settings in force."""

    servers: tuple[Server, ...]
    settings: MemcacheSettings

    def describe(self) -> str:
        """The URL without options, for ``repr`` and error messages (memcached has no passwords)."""
        if len(self.servers) == 1 and self.servers[0].is_socket:
            return f"memcache://{self.servers[0]}"
        return "memcache://" + ",".join(str(s) for s in self.servers)


def _server(text: str, where: str) -> Server:
    if not text:
        raise ConfigError(f"{where}: an empty server in the list; {_FORM}")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"{where}: bad IPv6 server {text!r}; write it as [::1]:11211")
        port_text = rest[1:]
    else:
        if text.count(":") > 1:
            raise ConfigError(f"{where}: IPv6 server {text!r} needs brackets: [{text}]:11211")
        host, _, port_text = text.partition(":")
    if not host:
        raise ConfigError(f"{where}: server {text!r} has no host; {_FORM}")
    if not port_text:
        return Server(host, DEFAULT_PORT)
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise ConfigError(f"{where}: server {text!r} has an invalid port {port_text!r} (1-65535)")
    return Server(host, port)


def parse_url(url: str, base: MemcacheSettings | None = None) -> MemcacheTarget:
    """Parse a ``memcache://`` URL over ``base`` settings (the defaults when None). Raises
    :class:`~machinery.errors.ConfigError` saying what is wrong; the message never shows a password."""
    where = f"memcache URL {redact_url(url)!r}"
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise ConfigError(f"not a memcache URL: {redact_url(url)!r}; {_FORM}")
    rest, _, query = rest.partition("?")
    rest = rest.partition("#")[0]
    options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False))
    settings = (base or MemcacheSettings()).with_query(options, url)
    if rest.startswith("/"):
        path = unquote(rest)
        if path == "/" or "," in path:
            raise ConfigError(f"{where}: a unix socket URL names one socket path; {_FORM}")
        return MemcacheTarget((Server(path, 0),), settings)
    hosts, slash, path = rest.partition("/")
    if "@" in hosts:
        raise ConfigError(
            f"{where}: memcached's text protocol has no user or password; remove the part before '@'"
        )
    if slash and path:
        raise ConfigError(f"{where}: memcache URLs have no path or database ({path!r}); {_FORM}")
    if not hosts:
        raise ConfigError(f"{where} names no server; {_FORM}")
    servers = tuple(_server(part.strip(), where) for part in hosts.split(","))
    return MemcacheTarget(servers, settings)
