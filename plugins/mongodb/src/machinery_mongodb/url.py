"""MongoDB URLs, parsed without any I/O (no DNS lookup, no connection).

- ``mongodb://host[:27017]``: one server (27017 is the default port).
- ``mongodb://user:password@host/?authSource=admin``: credentials; percent-encode a password holding
  ``@``, ``:``, ``/``, ``?`` or ``#``.
- ``mongodb://h1:27017,h2:27017,h3:27017/?replicaSet=rs0``: a replica set (seed list plus its name).
- ``mongodb+srv://user:password@cluster.example.net/``: the host names an SRV record; the driver looks
  it up (and its TXT record of options) when it first connects, and TLS is on by default.
- ``/dbname`` in the path picks the database; without it the setting ``mongodb.database`` does
  (default ``machinery``).
- Every MongoDB connection-string option (``tls``, ``tlsCAFile``, ``replicaSet``, ``w``,
  ``serverSelectionTimeoutMS``...) goes to the driver, which validates it here already. TLS is
  verified unless the URL says ``tlsInsecure=true`` or ``tlsAllowInvalidCertificates=true``.
- Options of this plugin (not sent to the driver): ``wait=auto|change_stream|poll`` (how ``wait()``
  learns of results, see the backend).

Errors are :class:`~machinery.errors.ConfigError` naming the URL through
:func:`machinery.redact.redact_url`, never with the password.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

from pymongo.errors import ConfigurationError
from pymongo.uri_parser import split_hosts, split_options

from machinery.errors import ConfigError
from machinery.redact import redact_url

from .settings import BAD_DATABASE_CHARS

__all__ = ["SCHEMES", "WAIT_MODES", "MongoTarget", "parse_url"]

SCHEMES = ("mongodb", "mongodb+srv")
DEFAULT_PORT = 27017
#: How ``wait()`` learns of results: change streams when the server has them, or always / never.
WAIT_MODES = ("auto", "change_stream", "poll")
#: Query parameters of this plugin; everything else is the driver's.
PLUGIN_PARAMS = frozenset({"wait"})


@dataclass(frozen=True)
class MongoTarget:
    """Where and how to connect, as parsed from a URL (``password`` is never shown by ``repr``)."""

    scheme: str
    #: ``(host, port)`` pairs: the server, or the seed list of a replica set; ``+srv``: the SRV name
    #: with port 0
    hosts: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: the database named in the URL's path ("" when none: the setting decides)
    database: str = ""
    #: the driver's options from the query, validated and normalised by it (names in lower case,
    #: times in seconds: ``serverselectiontimeoutms: 3.0``)
    options: Mapping[str, Any] = field(default_factory=dict)
    #: ``auto``, ``change_stream`` or ``poll``
    wait: str = "auto"
    #: the URL as given (the driver parses it again when the client is built)
    url: str = field(default="", repr=False)
    #: the URL with its secrets removed, for messages
    safe_url: str = ""

    @property
    def srv(self) -> bool:
        return self.scheme == "mongodb+srv"

    @property
    def replica_set(self) -> str:
        """The replica-set name from ``replicaSet`` ("" when none)."""
        return str(self.options.get("replicaset", ""))

    @property
    def tls(self) -> bool:
        """True when the connection uses TLS: ``tls``/``ssl`` set, or ``+srv`` (TLS by default)."""
        for name in ("tls", "ssl"):
            if name in self.options:
                return bool(self.options[name])
        return self.srv

    def describe(self) -> str:
        """The redacted URL, for log lines and errors."""
        return self.safe_url


def _fail(url: str, problem: str) -> ConfigError:
    return ConfigError(f"invalid MongoDB URL {redact_url(url)!r}: {problem}")


def _scrub(text: str, password: str | None) -> str:
    """``text`` with the password removed (driver messages may quote parts of the URL)."""
    return text.replace(password, "***") if password else text


def _split_userinfo(url: str, userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, sep, password = userinfo.partition(":")
    if not user:
        raise _fail(url, "a user name is missing before the password")
    for part in (user, password):
        if any(c in part for c in "@/:?#[]"):
            raise _fail(url, "percent-encode the user name and password (RFC 3986)")
    return unquote(user), (unquote(password) if sep else None)


def _parse_database(url: str, path: str) -> str:
    name = unquote(path)
    if any(c in BAD_DATABASE_CHARS for c in name):
        raise _fail(url, f'the database name {name!r} may not contain / \\ . space " $ or NUL')
    return name


def parse_url(url: str) -> MongoTarget:
    """Parse a MongoDB URL (see the module docs). Raises :class:`~machinery.errors.ConfigError`."""
    if not isinstance(url, str) or "://" not in url:
        raise _fail(str(url), "expected mongodb://host[:port][/database][?options] or mongodb+srv://...")
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise _fail(url, f"unknown scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    if "#" in rest:
        raise _fail(url, "a MongoDB URL has no fragment ('#'): percent-encode it in the password")
    rest, _, query = rest.partition("?")
    userinfo, at, hostpath = rest.rpartition("@")
    if not at:
        userinfo, hostpath = "", rest
    username, password = _split_userinfo(url, userinfo)
    hostlist, _, path = hostpath.partition("/")
    if not hostlist:
        raise _fail(url, "a host is missing (e.g. mongodb://localhost:27017)")
    if "/" in path:
        raise _fail(url, f"expected /<database> after the hosts, got /{path}")
    database = _parse_database(url, path)
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise _fail(url, "the query string is malformed") from None
    plugin = {k: v for k, v in pairs if k in PLUGIN_PARAMS}
    driver_query = _without_plugin_params(query)
    wait = plugin.get("wait", "auto").strip().lower()
    if wait not in WAIT_MODES:
        raise _fail(url, f"wait must be one of {', '.join(WAIT_MODES)}, got {plugin['wait']!r}")
    try:
        hosts = tuple(split_hosts(hostlist, default_port=None if scheme == "mongodb+srv" else DEFAULT_PORT))
        options = {k.lower(): v for k, v in split_options(driver_query).items()} if driver_query else {}
    except (ConfigurationError, ValueError, OSError) as exc:  # OSError: a TLS file it cannot read
        raise _fail(url, _scrub(str(exc), password)) from None
    if scheme == "mongodb+srv":
        if len(hosts) != 1:
            raise _fail(url, "mongodb+srv:// takes exactly one host name (the SRV record), no list")
        if hosts[0][1] is not None:
            raise _fail(url, "mongodb+srv:// takes no port: the SRV record gives the ports")
    return MongoTarget(
        scheme,
        tuple((host, port or 0) for host, port in hosts),
        username=username,
        password=password,
        database=database,
        options=options,
        wait=wait,
        url=url,
        safe_url=redact_url(url),
    )


def _without_plugin_params(query: str) -> str:
    """The raw query without this plugin's parameters (values stay percent-encoded for the driver)."""
    return "&".join(part for part in query.split("&") if part and part.split("=", 1)[0] not in PLUGIN_PARAMS)


def driver_url(target: MongoTarget) -> str:
    """The URL for the driver: the original without this plugin's own query parameters."""
    head, sep, query = target.url.partition("?")
    kept = _without_plugin_params(query) if sep else ""
    return head + ("?" + kept if kept else "")
