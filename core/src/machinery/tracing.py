"""OpenTelemetry spans for publish and execute, carried in the message headers.

One workflow is one trace: ``send group`` / ``send chord`` / ``send chain`` spans parent their members'
publish spans, and whatever a worker sends while handling a task (chain links, chord callbacks,
retries, errbacks) continues the trace that task's message carried.

Active only when ``opentelemetry-api`` is installed (``pip install 'machinery-core[otel]'``);
otherwise every function here is a no-op costing one attribute check. Header values are strings,
so Go Machinery (whose carrier is a text map) can read the same headers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .signature import Signature

__all__ = ["ENABLED", "active", "continued", "execute_span", "publish_span", "trace_id_of", "workflow_span"]

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace

    _tracer: Any = trace.get_tracer("machinery")
    ENABLED = True
except ImportError:  # pragma: no cover - exercised in the wheel test's bare venv
    ENABLED = False


def active() -> bool:
    """True when spans would be recorded: the API is installed and a real tracer provider is set
    (the API alone, with no SDK configured, costs nothing per task)."""
    if not ENABLED:
        return False
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def _attributes(sig: Signature) -> dict[str, str]:
    attrs = {"machinery.task.name": sig.name, "machinery.task.uuid": sig.uuid}
    if sig.group_uuid:
        attrs["machinery.group.uuid"] = sig.group_uuid
    if sig.chord_callback is not None:
        attrs["machinery.chord.callback.uuid"] = sig.chord_callback.uuid
    return attrs


@contextmanager
def publish_span(sig: Signature) -> Iterator[None]:
    """A PRODUCER span around publishing ``sig``; its context is injected into ``sig.headers``."""
    if not active():
        yield
        return
    with _tracer.start_as_current_span(
        f"send {sig.name}", kind=trace.SpanKind.PRODUCER, attributes=_attributes(sig)
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        if carrier:
            sig.headers = {**sig.headers, **carrier}
        yield


def _carrier(sig: Signature) -> dict[str, str]:
    return {k: v for k, v in sig.headers.items() if isinstance(v, str)}


@contextmanager
def workflow_span(kind: str, group_uuid: str, size: int) -> Iterator[None]:
    """A PRODUCER span around sending a group, chord or chain: the members' spans are its children."""
    if not active():
        yield
        return
    attributes = {"machinery.workflow": kind, "machinery.workflow.size": size}
    if group_uuid:
        attributes["machinery.group.uuid"] = group_uuid
    with _tracer.start_as_current_span(f"send {kind}", kind=trace.SpanKind.PRODUCER, attributes=attributes):
        yield


@contextmanager
def continued(sig: Signature) -> Iterator[None]:
    """Make the trace context that ``sig``'s message carried the current one, so messages sent while
    handling it join its trace (a producer span outside any span would start a new trace)."""
    if not active():
        yield
        return
    token = otel_context.attach(propagate.extract(_carrier(sig)))
    try:
        yield
    finally:
        otel_context.detach(token)


@contextmanager
def execute_span(sig: Signature) -> Iterator[None]:
    """A CONSUMER span around running ``sig``, a child of the producer's context when present."""
    if not active():
        yield
        return
    parent = propagate.extract(_carrier(sig))
    with _tracer.start_as_current_span(
        sig.name, context=parent, kind=trace.SpanKind.CONSUMER, attributes=_attributes(sig)
    ):
        yield


def trace_id_of(sig: Signature) -> str | None:
    """The trace id (32 hex digits) of the trace ``sig``'s message carries (its W3C ``traceparent``
    header), or None. Read from the header, so it costs no span and works without the SDK."""
    header = sig.headers.get("traceparent") if isinstance(sig.headers, dict) else None
    if not isinstance(header, str):
        return None
    parts = header.split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or parts[1] == "0" * 32:
        return None
    try:
        int(parts[1], 16)
    except ValueError:
        return None
    return parts[1].lower()
