"""Hide secrets in URLs before they reach a log line, an error message or a ``repr``.

:func:`redact_url` is deliberately paranoid: it would rather mangle an odd URL than print a password.

- User info is dropped, not masked: ``amqp://guest:guest@localhost:5672`` → ``amqp://localhost:5672``
  (the same result as Go Machinery's ``RedactURL``).
- Comma host lists keep their hosts: ``redis://:pw@h1:1,h2:2/0`` → ``redis://h1:1,h2:2/0``.
- ``redis+socket://pw@/tmp/x.sock`` → ``redis+socket:///tmp/x.sock``.
- Query parameters whose name looks secret (``password``, ``token``, ``secret``, ``*key*``, ``auth*``,
  ``X-Amz-Credential``/``Signature``/``Security-Token``, ...) are dropped; the others are kept. The
  fragment is always dropped.
- Several URLs in one string (a broker list joined by ``multiple_broker_separator``) are each redacted.
- A password holding raw ``@``, ``/``, ``?``, ``#`` or ``&`` (not percent-encoded) is still removed:
  unless the authority is empty (``sqlite:///a@b.db``), everything up to the *last* ``@`` is dropped. A URL
  whose path or query holds an ``@`` after a host therefore loses that part too (``redis://h/0?x=a@b`` →
  ``redis://b``); that is the price of never leaking.
- Known limit: a password holding a raw ``://`` cannot be told from a second URL in a list, so a part of
  it may show. Percent-encode such passwords (clients need that anyway).
- Never raises: any ``str`` (garbage included) gives a ``str`` back.
"""

from __future__ import annotations

import itertools
import re
from urllib.parse import unquote

__all__ = ["is_secret_name", "redact_url"]

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_SECRET_NAME_RE = re.compile(
    r"pass|pwd|secret|token|key|auth|cred|sig|session|private|cookie|bearer", re.IGNORECASE
)


#: Names that match the pattern above but are known not to hold a secret (MongoDB's URL options).
_NOT_SECRET = frozenset({"authsource", "authmechanism", "authmechanismproperties"})


def is_secret_name(name: str) -> bool:
    """True when a setting or query-parameter name looks secret (``password``, ``api_key``, ``token``...)."""
    return name.lower() not in _NOT_SECRET and bool(_SECRET_NAME_RE.search(name))


def redact_url(url: str) -> str:
    """``amqp://guest:guest@host:5672/vh`` → ``amqp://host:5672/vh``: user info, secret query parameters and
    fragment removed. See the module docstring for the exact rules; the result never contains the password.
    """
    text = str(url)
    if "@" not in text and "?" not in text and "#" not in text:
        return text  # nothing that can hold a secret (fast path for the common "sqlite:///x.db")
    starts = [m.start() for m in _SCHEME_RE.finditer(text)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    starts.append(len(text))
    out: list[str] = []
    for begin, end in itertools.pairwise(starts):
        segment = text[begin:end]
        match = _SCHEME_RE.match(segment)
        scheme = match.group(0) if match else ""
        out.append(scheme + _redact_body(segment[len(scheme) :]))
    return "".join(out)


def _redact_body(body: str) -> str:
    """Redact what follows ``scheme://`` (or a whole scheme-less string such as ``user:pw@host``)."""
    # 1. User info. An empty authority (body starts with "/") has none: a "@" is then part of a path
    #    (sqlite:///a@b.db). Otherwise everything up to the last "@" is dropped, so a password holding raw
    #    "@", "/", "?", "#" or "&" never survives, whatever its shape.
    if not body.startswith("/"):
        body = body[body.rfind("@") + 1 :]
    # 2. Fragment: always dropped.
    hash_pos = body.find("#")
    if hash_pos != -1:
        body = body[:hash_pos]
    # 3. Query: drop parameters whose name looks secret.
    query_pos = body.find("?")
    if query_pos == -1:
        return body
    head, query = body[:query_pos], body[query_pos + 1 :]
    kept = [pair for pair in query.split("&") if pair and not _secret_pair(pair)]
    return head + ("?" + "&".join(kept) if kept else "")


def _secret_pair(pair: str) -> bool:
    name = pair.split("=", 1)[0]
    try:
        name = unquote(name.replace("+", " "))
    except Exception:  # pragma: no cover - unquote does not raise on str, but never leak on a surprise
        return True
    return is_secret_name(name) or "@" in pair
