"""SQS and DynamoDB URLs in Go Machinery's forms (and ``sqs://`` / ``dynamodb://``), parsed without I/O.

Broker:

- ``https://sqs.<region>.amazonaws.com/<account-id>``: Machinery's form, the queue-URL prefix; the queue
  name is the routing key. The region comes from the host.
- ``http(s)://host:port/<account-id>``: a local or private endpoint (moto, LocalStack, ElasticMQ, a VPC
  endpoint). Claimed when the path is a 12-digit account id, or for any one-segment path when the
  environment variable ``DISABLE_STRICT_SQS_CHECK`` is set (Go's switch).
- ``sqs://``: region, credentials and endpoint from boto3's usual configuration (``AWS_DEFAULT_REGION``,
  ``AWS_ENDPOINT_URL_SQS``, profiles, instance roles). ``sqs://KEY:SECRET@`` gives credentials inline.

Backend: ``dynamodb://`` (the same boto3 configuration, ``AWS_ENDPOINT_URL_DYNAMODB``) and Go's
``https://dynamodb.<region>.amazonaws.com``.

Query parameters (every form): ``region``, ``endpoint_url``, ``account`` and the plugin's settings
(see :mod:`machinery_sqs.settings`), e.g. ``sqs://?region=eu-west-1&visibility_timeout=60``.
Errors never show a secret: every URL in a message goes through :func:`machinery.redact.redact_url`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from machinery.errors import ConfigError
from machinery.redact import redact_url

__all__ = ["AWSTarget", "is_dynamodb_url", "is_sqs_url", "parse_backend_url", "parse_broker_url"]

#: ``sqs.<region>.amazonaws.com``, the FIPS, China and dual-stack variants
_SQS_HOST = re.compile(r"^sqs(?:-fips)?\.([a-z0-9-]+)\.(?:amazonaws\.com(?:\.cn)?|api\.aws)$")
_DYNAMODB_HOST = re.compile(r"^dynamodb(?:-fips)?\.([a-z0-9-]+)\.(?:amazonaws\.com(?:\.cn)?|api\.aws)$")
_ACCOUNT = re.compile(r"^[0-9]{12}$")
#: Query parameters about where to connect; the rest are settings.
TARGET_PARAMS = frozenset({"region", "endpoint_url", "account"})
STRICT_CHECK_ENV = "DISABLE_STRICT_SQS_CHECK"


@dataclass(frozen=True)
class AWSTarget:
    """Where an SQS or DynamoDB client connects, as parsed from a URL (secrets hidden by ``repr``)."""

    service: str
    #: the URL, redacted: for messages
    where: str
    endpoint_url: str | None = None
    region: str | None = None
    #: the queue owner's account id (``QueueOwnerAWSAccountId``); None: the caller's own
    account: str | None = None
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    #: plugin settings from the query (``visibility_timeout=60``...)
    options: Mapping[str, str] = field(default_factory=dict)


def _split(url: str) -> tuple[str, str, str, str, dict[str, str]]:
    """(scheme, host, port-ful netloc without credentials, path, query) of ``url``."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(f"invalid URL {redact_url(url)!r}: {exc}") from None
    host = (parts.hostname or "").lower()
    netloc = parts.netloc.rpartition("@")[2]
    query: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in query:
            raise ConfigError(f"{redact_url(url)}: query parameter {key!r} given twice")
        query[key] = value
    return parts.scheme.lower(), host, netloc, parts.path, query


def _credentials(url: str) -> tuple[str | None, str | None]:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return None, None
    if not parts.username or not parts.password:
        raise ConfigError(f"{redact_url(url)}: give both the access key and the secret (KEY:SECRET@)")
    return unquote(parts.username), unquote(parts.password)


def _path_segments(path: str) -> list[str]:
    return [unquote(p) for p in path.split("/") if p]


def is_sqs_url(url: str) -> bool:
    """True when ``url`` is one of the broker forms this package serves (no I/O)."""
    if "://" not in url:
        return False
    try:
        scheme, host, _netloc, path, _query = _split(url)
    except ConfigError:
        return url.lower().startswith("sqs://")
    if scheme == "sqs":
        return True
    if scheme not in ("http", "https"):
        return False
    if _SQS_HOST.match(host):
        return True
    segments = _path_segments(path)
    if len(segments) != 1:
        return False
    return bool(_ACCOUNT.match(segments[0]) or os.environ.get(STRICT_CHECK_ENV))


def is_dynamodb_url(url: str) -> bool:
    """True when ``url`` is one of the backend forms this package serves (no I/O)."""
    if "://" not in url:
        return False
    scheme = url.partition("://")[0].lower()
    if scheme == "dynamodb":
        return True
    if scheme != "https":
        return False
    try:
        return bool(_DYNAMODB_HOST.match(_split(url)[1]))
    except ConfigError:
        return False


def _target_from_query(service: str, url: str, query: dict[str, str], **known: str | None) -> AWSTarget:
    access, secret = _credentials(url)
    endpoint = query.get("endpoint_url") or known.get("endpoint_url")
    region = query.get("region") or known.get("region")
    account = query.get("account") or known.get("account")
    if account is not None and not _ACCOUNT.match(account):
        raise ConfigError(f"{redact_url(url)}: the account id must be 12 digits, got {account!r}")
    options = {k: v for k, v in query.items() if k not in TARGET_PARAMS}
    return AWSTarget(
        service, redact_url(url), endpoint or None, region or None, account, access, secret, options
    )


def parse_broker_url(url: str) -> AWSTarget:
    """Parse an SQS broker URL (see the module docstring); raises :class:`ConfigError`."""
    scheme, host, netloc, path, query = _split(url)
    if scheme == "sqs":
        if host or path.strip("/"):
            raise ConfigError(
                f"{redact_url(url)}: sqs:// takes no host or path; give the endpoint and region as "
                "?endpoint_url=...&region=... or through AWS_ENDPOINT_URL_SQS / AWS_DEFAULT_REGION"
            )
        return _target_from_query("sqs", url, query)
    if scheme not in ("http", "https") or not host:
        raise ConfigError(
            f"{redact_url(url)} is not an SQS URL (https://sqs.<region>.amazonaws.com/<account>)"
        )
    segments = _path_segments(path)
    if len(segments) > 1:
        raise ConfigError(
            f"{redact_url(url)}: give the queue-URL prefix https://sqs.<region>.amazonaws.com/<account-id>; "
            "the queue name comes from the routing key"
        )
    match = _SQS_HOST.match(host)
    if segments and not _ACCOUNT.match(segments[0]) and match:
        raise ConfigError(f"{redact_url(url)}: the path must be the 12-digit account id, got {segments[0]!r}")
    # a local endpoint (DISABLE_STRICT_SQS_CHECK) may use any path, e.g. ElasticMQ's "queue": its own account
    account = segments[0] if segments and _ACCOUNT.match(segments[0]) else None
    return _target_from_query(
        "sqs", url, query, endpoint_url=f"{scheme}://{netloc}", region=match.group(1) if match else None,
        account=account,
    )  # fmt: skip


def parse_backend_url(url: str) -> AWSTarget:
    """Parse a DynamoDB backend URL (see the module docstring); raises :class:`ConfigError`."""
    scheme, host, netloc, path, query = _split(url)
    if scheme == "dynamodb":
        if host or path.strip("/"):
            raise ConfigError(
                f"{redact_url(url)}: dynamodb:// takes no host or path; give the endpoint and region as "
                "?endpoint_url=...&region=... or through AWS_ENDPOINT_URL_DYNAMODB / AWS_DEFAULT_REGION"
            )
        return _target_from_query("dynamodb", url, query)
    match = _DYNAMODB_HOST.match(host) if scheme == "https" else None
    if match is None:
        raise ConfigError(
            f"{redact_url(url)} is not a DynamoDB URL (dynamodb:// or https://dynamodb.<region>...)"
        )
    if path.strip("/"):
        raise ConfigError(f"{redact_url(url)}: a DynamoDB URL has no path (tables come from the settings)")
    return _target_from_query("dynamodb", url, query, endpoint_url=f"https://{netloc}", region=match.group(1))
