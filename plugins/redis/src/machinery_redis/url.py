"""Redis URLs in Go Machinery's forms, parsed without any I/O.

- ``redis://host:6379/0``: one server, database 0 (port 6379 and db 0 are the defaults).
- ``redis://password@host:6379/0``: Machinery's form, a lone user-info is the password.
- ``redis://:password@host/0`` and ``redis://user:password@host/0``: the standard forms (ACL user).
- ``rediss://...``: the same over TLS; files from ``Config.tls`` or the query (``ssl_ca_certs``,
  ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs=none``, ``ssl_check_hostname``).
- ``redis+socket://[[user:]password@]/path/file.sock[:/db]``: a unix socket (Machinery's form);
  ``?db=N`` works too.
- ``redis://h1:7000,h2:7001,h3:7002/0``: Redis Cluster, Machinery's comma list (or one node with
  ``Config.redis.cluster_mode``); ``rediss://`` for a cluster over TLS. Database 0 only.
- ``redis+sentinel://[password@]h:26379[,h2:26379]/master[/db]``: Sentinel addresses, master name, db.

Query parameters that tune this plugin (also constructor keywords): ``lease``, ``heartbeat``,
``retry_window`` (seconds), ``priority`` (true/false), ``delayed_tasks_mover`` (true/false),
``go_compatible_chords`` (true/false).
Percent-encode a password holding ``@``, ``/``, ``?``, ``#`` or ``,``. Errors never show the password: every
URL in a message goes through :func:`machinery.redact.redact_url`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

from machinery import settings
from machinery.errors import ConfigError
from machinery.redact import redact_url

__all__ = ["SCHEMES", "RedisTarget", "parse_bool", "parse_url"]

SCHEMES = ("redis", "rediss", "redis+socket", "redis+sentinel")
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379

#: Query parameters about the connection (passed on to redis-py's TLS settings).
TLS_PARAMS = frozenset(
    {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname", "ssl_ca_path"}
)
#: Query parameters tuning the plugin itself.
OPTION_PARAMS = frozenset(
    {"lease", "heartbeat", "retry_window", "priority", "delayed_tasks_mover", "go_compatible_chords"}
)
OTHER_PARAMS = frozenset({"db", "client_name", "password"})
KNOWN_PARAMS = TLS_PARAMS | OPTION_PARAMS | OTHER_PARAMS


def parse_bool(value: str, what: str) -> bool:
    """``true/false``, ``1/0``, ``yes/no``, ``on/off`` (any case); anything else is a ConfigError."""
    try:
        return settings.parse_bool(value)
    except ValueError:
        raise ConfigError(f"{what} must be true or false, got {value!r}") from None


@dataclass(frozen=True)
class RedisTarget:
    """Where and how to connect, as parsed from a URL (``password`` is never shown by ``repr``)."""

    scheme: str
    #: ``(host, port)`` pairs: one server, the cluster's seed nodes, or the sentinels
    hosts: tuple[tuple[str, int], ...] = ()
    socket_path: str = ""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    tls: bool = False
    cluster: bool = False
    #: Sentinel master name (``redis+sentinel://``)
    master_name: str = ""
    #: TLS settings from the query (redis-py names)
    tls_params: Mapping[str, str] = field(default_factory=dict)
    #: plugin options from the query (``lease``, ``priority``...)
    options: Mapping[str, str] = field(default_factory=dict)
    client_name: str = ""
    #: the URL with its secrets removed, for messages
    safe_url: str = ""

    @property
    def sentinel(self) -> bool:
        return bool(self.master_name)

    def describe(self) -> str:
        """The redacted URL, for log lines and errors."""
        return self.safe_url


def _fail(url: str, problem: str) -> ConfigError:
    return ConfigError(f"invalid Redis URL {redact_url(url)!r}: {problem}")


def _split_userinfo(userinfo: str) -> tuple[str | None, str | None]:
    """Machinery's rule: ``pwd`` alone is a password; ``user:pwd`` or ``:pwd`` as usual."""
    if not userinfo:
        return None, None
    if ":" in userinfo:
        user, password = userinfo.split(":", 1)
        return (unquote(user) or None), unquote(password)
    return None, unquote(userinfo)


def _parse_db(url: str, text: str) -> int:
    text = text.strip()
    if not text:
        return 0
    if not text.isdigit():
        raise _fail(url, f"the database must be a number (e.g. /0), got {text!r}")
    return int(text)


def _parse_host(url: str, text: str, default_port: int) -> tuple[str, int]:
    text = text.strip()
    if not text:
        raise _fail(url, "a host is missing (e.g. redis://localhost:6379/0)")
    if text.startswith("["):  # [ipv6]:port
        end = text.find("]")
        if end == -1:
            raise _fail(url, f"unclosed '[' in host {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise _fail(url, f"unexpected {rest!r} after host {host!r}")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _fail(url, f"the port must be a number from 1 to 65535, got {port_text!r}")
    return host, int(port_text)


def parse_url(url: str) -> RedisTarget:
    """Parse a Redis URL (see the module docs). Raises :class:`~machinery.errors.ConfigError` with the
    URL redacted."""
    if not isinstance(url, str) or "://" not in url:
        raise _fail(str(url), "expected scheme://..., e.g. redis://localhost:6379/0")
    scheme, body = url.split("://", 1)
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise _fail(url, f"unknown scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    body = body.split("#", 1)[0]
    query_text = ""
    if "?" in body:
        body, query_text = body.split("?", 1)
    try:
        query = dict(parse_qsl(query_text, keep_blank_values=True, strict_parsing=bool(query_text)))
    except ValueError:
        raise _fail(url, "the query string is malformed") from None
    unknown = sorted(set(query) - KNOWN_PARAMS)
    if unknown:
        raise _fail(
            url, f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_PARAMS))}"
        )
    tls_params = {k: v for k, v in query.items() if k in TLS_PARAMS}
    options = {k: v for k, v in query.items() if k in OPTION_PARAMS}
    client_name = query.get("client_name", "")
    for name in ("lease", "heartbeat", "retry_window"):
        if name in options:
            try:
                if float(options[name]) <= 0:
                    raise ValueError
            except ValueError:
                raise _fail(url, f"{name} must be a positive number of seconds") from None
    for name in ("priority", "delayed_tasks_mover", "go_compatible_chords"):
        if name in options:
            parse_bool(options[name], f"Redis URL parameter {name}")

    if scheme == "redis+socket":
        return _parse_socket(url, body, query, tls_params, options, client_name)

    userinfo = ""
    if "@" in body:
        userinfo, body = body.rsplit("@", 1)
    username, password = _split_userinfo(userinfo)
    if "password" in query:
        password = query["password"]
    hostpart, _, path = body.partition("/")
    if scheme == "redis+sentinel":
        master, _, db_text = path.partition("/")
        if not master:
            raise _fail(url, "the sentinel master name is missing (redis+sentinel://host:26379/mymaster/0)")
        hosts = tuple(_parse_host(url, h, DEFAULT_SENTINEL_PORT) for h in hostpart.split(","))
        db = _parse_db(url, query.get("db", db_text.strip("/")))
        return RedisTarget(
            scheme,
            hosts,
            username=username,
            password=password,
            db=db,
            master_name=unquote(master),
            tls_params=tls_params,
            options=options,
            client_name=client_name,
            safe_url=redact_url(url),
        )
    if "/" in path.strip("/"):
        raise _fail(url, f"expected /<db> after the host, got /{path}")
    hosts = tuple(_parse_host(url, h, DEFAULT_PORT) for h in hostpart.split(","))
    db = _parse_db(url, query.get("db", path.strip("/")))
    return RedisTarget(
        scheme,
        hosts,
        username=username,
        password=password,
        db=db,
        tls=scheme == "rediss",
        cluster=len(hosts) > 1,
        tls_params=tls_params,
        options=options,
        client_name=client_name,
        safe_url=redact_url(url),
    )


def _parse_socket(
    url: str,
    body: str,
    query: Mapping[str, str],
    tls_params: Mapping[str, str],
    options: Mapping[str, str],
    client_name: str,
) -> RedisTarget:
    # redis+socket://[[user:]password@]/path/to/file.sock[:/db]
    userinfo = ""
    slash = body.find("/")
    at = body.rfind("@", 0, slash if slash != -1 else len(body))
    if at != -1:
        userinfo, body = body[:at], body[at + 1 :]
    if not body.startswith("/"):
        raise _fail(url, "expected an absolute socket path: redis+socket:///path/to/redis.sock")
    username, password = _split_userinfo(userinfo)
    if "password" in query:
        password = query["password"]
    path, db_text = body, ""
    head, sep, tail = body.rpartition(":/")
    if sep and (tail.isdigit() or not tail):
        path, db_text = head, tail
    path = unquote(path)
    if path in ("", "/"):
        raise _fail(url, "the socket path is missing")
    db = _parse_db(url, query.get("db", db_text))
    return RedisTarget(
        "redis+socket",
        socket_path=path,
        username=username,
        password=password,
        db=db,
        tls_params=tls_params,
        options=options,
        client_name=client_name,
        safe_url=redact_url(url),
    )


def same_server(a: RedisTarget | None, b: RedisTarget | None) -> bool:
    """True when ``a`` and ``b`` reach the same data: same topology, address, database and credentials
    (plugin options such as ``lease`` may differ). The broker then stores PENDING states and publishes
    in one round trip."""
    if a is None or b is None:
        return False
    return (a.scheme, a.hosts, a.socket_path, a.username, a.password, a.db, a.cluster, a.master_name) == (
        b.scheme,
        b.hosts,
        b.socket_path,
        b.username,
        b.password,
        b.db,
        b.cluster,
        b.master_name,
    )
