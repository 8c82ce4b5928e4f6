"""Message signing: only holders of a signing key can have a worker run a task (opt-in).

With ``Config.signing_keys`` set, every message Machinery publishes (``send_*``, chain and chord callbacks,
retries, the worker's requeues) carries the header::

    machinery-signature: v1:<key id>:<timestamp>:<hex HMAC-SHA256>

and a worker with keys runs only messages whose signature checks out. Without keys nothing is signed and
the header is ignored, as before.

**Canonical form (v1).** The HMAC-SHA256, keyed with the first key, is computed over the UTF-8 bytes of::

    "machinery-signature:v1\\n" + <timestamp> + "\\n" + <JSON>

where ``<timestamp>`` is the signing time in whole Unix seconds, as written in the header, and ``<JSON>`` is
the message in Go Machinery's wire layout (:func:`machinery.codec.signature_to_dict`) without the
``machinery-signature`` header and without ``SQSReceiptHandle`` (a transport writes it on receipt), serialised
with sorted keys, no spaces, ASCII only. The verifier decodes the message and rebuilds the same bytes, so
what is covered is exactly what the worker uses: task name, arguments, queue, ETA, headers, retry settings,
callbacks (with their own arguments), group and chord.

**Keys.** A key is a string (its UTF-8 bytes) or ``base64:`` followed by the base64 of raw bytes. Its id is
the first 8 hex digits of the SHA-256 of ``"machinery-key-id:"`` + the key bytes, so a verifier picks the
key without trying each. The first key signs; every key verifies (rotation: add the new key second, roll
it out, move it first, roll out, then drop the old one).

**Checks, in order**, each with its own log reason: the message decodes (``malformed``), has the header
(``unsigned``), the header has the v1 form (``malformed signature header``), the key id is known
(``unknown key id``), the HMAC matches (``bad signature``: forged or tampered) and, when
``Config.signing_max_age`` > 0, it is not older than that many seconds, counted from the later of the
signing time and the ETA (``too old``). A rejected message is never run and never writes a task state: it
is dead-lettered.

What signing does not do: hide anything (use TLS for confidentiality), stop a replay of a genuine
message within ``signing_max_age``, or protect the result backend (whoever can write there can write
states). Go Machinery workers re-publish callbacks and retries unsigned, so a mixed Go/Python fleet
cannot turn signing on.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import inspect
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import codec
from .errors import ConfigError, MessageError

if TYPE_CHECKING:
    from .broker import Delivery
    from .config import Config
    from .signature import Signature

__all__ = [
    "SIGNATURE_HEADER",
    "Signer",
    "key_id",
    "parse_key",
    "sign_messages",
    "signer_for",
    "verified",
]

logger = logging.getLogger("machinery.signing")

#: The header carrying the signature (in the message's ``Headers``, next to tracing's ``traceparent``).
SIGNATURE_HEADER = "machinery-signature"
_VERSION = "v1"
_PREFIX = b"machinery-signature:v1\n"
_BASE64 = "base64:"
#: fields a transport may set on receipt (Go's SQS broker writes the receipt handle into the message)
_UNSIGNED_FIELDS = ("SQSReceiptHandle",)
#: the stdlib encoder on purpose (not orjson): the canonical bytes must not depend on what is installed
_CANONICAL_JSON = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False, check_circular=False
)
#: shortest accepted key, in bytes: shorter keys are guessable offline from one signed message
MIN_KEY_BYTES = 16


def parse_key(text: str) -> bytes:
    """The bytes of one key: ``base64:...`` decoded, any other string as UTF-8. Raises ConfigError
    (never showing the key) when it is empty, not valid base64, or shorter than 16 bytes."""
    if text.startswith(_BASE64):
        try:
            raw = base64.b64decode(text[len(_BASE64) :], validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("a signing key starting with 'base64:' is not valid base64") from None
    else:
        raw = text.encode()
    if len(raw) < MIN_KEY_BYTES:
        raise ConfigError(
            f"a signing key is {len(raw)} bytes long; use at least {MIN_KEY_BYTES} "
            "(e.g. base64: followed by the output of `openssl rand -base64 32`)"
        )
    return raw


def key_id(raw: bytes) -> str:
    """The id a signature names its key by: 8 hex digits of a hash of the key (not the key itself)."""
    return hashlib.sha256(b"machinery-key-id:" + raw).hexdigest()[:8]


def keys_problem(keys: Any) -> str | None:
    """Why ``Config.signing_keys`` is unusable, or None (used by the setting's check)."""
    try:
        ids = [key_id(parse_key(k)) for k in keys]
    except ConfigError as exc:
        return str(exc)
    if len(set(ids)) != len(ids):
        return "the same signing key is listed twice"
    return None


def canonical(sig: Signature, timestamp: str) -> bytes:
    """The bytes the HMAC covers (see the module docstring)."""
    wire = codec.signature_to_dict(sig)
    headers = wire["Headers"]
    if SIGNATURE_HEADER in headers:
        wire["Headers"] = {k: v for k, v in headers.items() if k != SIGNATURE_HEADER}
    for name in _UNSIGNED_FIELDS:
        wire.pop(name, None)
    return _PREFIX + timestamp.encode() + b"\n" + _CANONICAL_JSON.encode(wire).encode()


@dataclass(frozen=True)
class Signer:
    """Signs with the first key, verifies with any; ``max_age`` seconds (0 = no limit)."""

    keys: tuple[tuple[str, bytes], ...]  # (key id, raw key), the signing key first
    max_age: float = 0.0

    def __repr__(self) -> str:
        return f"Signer(key_ids={[kid for kid, _ in self.keys]}, max_age={self.max_age:g})"

    def sign(self, sig: Signature, now: float | None = None) -> None:
        """Set ``sig``'s signature header (replacing an older one)."""
        kid, raw = self.keys[0]
        timestamp = str(int(time.time() if now is None else now))
        mac = hmac.new(raw, canonical(sig, timestamp), hashlib.sha256).hexdigest()
        sig.headers = {**sig.headers, SIGNATURE_HEADER: f"{_VERSION}:{kid}:{timestamp}:{mac}"}

    def problem(self, sig: Signature, now: float | None = None) -> str | None:
        """Why ``sig`` must not run (the failed check, for the log and the dead letter), or None."""
        header = sig.headers.get(SIGNATURE_HEADER) if sig.headers else None
        if header is None:
            return "unsigned"
        parts = header.split(":") if isinstance(header, str) else []
        if len(parts) != 4 or parts[0] != _VERSION or not parts[2].isdigit():
            return "malformed signature header"
        kid, timestamp, mac = parts[1], parts[2], parts[3]
        raw = next((key for known, key in self.keys if known == kid), None)
        if raw is None:
            return f"unknown key id {kid!r}"
        try:
            expected = hmac.new(raw, canonical(sig, timestamp), hashlib.sha256).hexdigest()
        except MessageError as exc:
            return f"cannot be re-encoded to verify ({exc})"
        if not hmac.compare_digest(expected, mac):
            return "bad signature (forged or tampered)"
        if self.max_age > 0:
            start = float(timestamp)
            if sig.eta is not None:
                start = max(start, sig.eta.timestamp())
            age = (time.time() if now is None else now) - start
            if age > self.max_age:
                return f"too old ({age:.0f}s since signing or ETA, signing_max_age is {self.max_age:g}s)"
        return None


@functools.lru_cache(maxsize=8)
def _signer(keys: tuple[str, ...], max_age: float) -> Signer:
    raws = [parse_key(k) for k in keys]
    return Signer(tuple((key_id(raw), raw) for raw in raws), max_age)


def signer_for(config: Config) -> Signer | None:
    """The :class:`Signer` of ``config``, or None when it has no signing keys (parsed keys are cached)."""
    keys = config.signing_keys
    if not keys:
        return None
    return _signer(tuple(keys), float(config.signing_max_age))


def sign_messages(config: Config, sigs: Iterable[Signature]) -> None:
    """Sign each of ``sigs`` in place when ``config`` has signing keys; else do nothing."""
    signer = signer_for(config)
    if signer is not None:
        now = time.time()
        for sig in sigs:
            signer.sign(sig, now)


def verified(config: Config, deliveries: Sequence[Delivery]) -> Sequence[Delivery]:
    """The deliveries a worker may handle. With signing keys, each one failing a check is dead-lettered
    (``nack(requeue=False)``) and logged with the failed check, before anything reads or writes its
    state; without keys, all of them."""
    signer = signer_for(config)
    if signer is None:
        return deliveries
    now = time.time()
    kept: list[Delivery] = []
    for delivery in deliveries:
        sig = delivery.signature
        problem = "malformed message, cannot be verified" if sig is None else signer.problem(sig, now)
        if problem is None:
            kept.append(delivery)
        else:
            _reject(delivery, problem)
    return kept


def _reject(delivery: Delivery, problem: str) -> None:
    sig = delivery.signature
    # repr: the name and uuid come from an untrusted message, so no line breaks reach the log
    what = f"task {sig.name!r} uuid {sig.uuid!r}" if sig is not None else "unreadable message"
    logger.error("rejected %s: signature check failed: %s; dead-lettered, not run", what, problem)
    reason = f"signature check failed: {problem}"
    try:
        nack: Any = delivery.nack  # ``reason=`` exists only on newer Delivery types
        if _takes_reason(type(delivery)):
            nack(requeue=False, reason=reason)
        else:
            nack(requeue=False)
    except Exception:
        logger.exception("dead-lettering the rejected %s failed", what)


@functools.lru_cache(maxsize=64)
def _takes_reason(kind: type) -> bool:
    """True when this delivery type's ``nack`` has the ``reason=`` parameter (added in plugin platform II)."""
    try:
        return "reason" in inspect.signature(getattr(kind, "nack")).parameters  # noqa: B009 - any type
    except (TypeError, ValueError, AttributeError):
        return False
