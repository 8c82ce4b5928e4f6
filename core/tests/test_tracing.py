"""OpenTelemetry: a publish span and an execute span, linked through the message headers."""

from __future__ import annotations

from typing import Any

import pytest

from machinery import Chain, Chord, Group, Machinery, Retry
from machinery.task import current_signature

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace", reason="the [otel] test extra is not installed")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """The in-memory exporter of the process's one SDK tracer provider (OpenTelemetry sets it once)."""
    if not isinstance(trace.get_tracer_provider(), sdk_trace.TracerProvider):
        provider = sdk_trace.TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    return _EXPORTER


def test_execute_span_is_a_child_of_the_publish_span(app: Machinery, exporter: InMemorySpanExporter) -> None:

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    worker = app.worker(concurrency=1)
    thread = worker.launch_async()
    result = app.send_task(add.s(1, 2))
    assert result.get(timeout=5) == 3
    worker.quit()
    thread.join(5)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) >= {"send add", "add"}
    producer, consumer = spans["send add"], spans["add"]
    assert consumer.parent is not None
    assert consumer.parent.span_id == producer.context.span_id
    assert consumer.context.trace_id == producer.context.trace_id
    assert consumer.attributes is not None and consumer.attributes["machinery.task.uuid"] == result.uuid


def _run(app: Machinery, send: Any) -> Any:
    worker = app.worker(concurrency=2)
    thread = worker.launch_async()
    try:
        return send().get(timeout=10)
    finally:
        worker.quit()
        thread.join(5)


def test_a_workflow_is_one_trace(app: Machinery, exporter: InMemorySpanExporter) -> None:
    @app.task
    def add(*args: int) -> int:
        return sum(args)

    tries: list[int] = []

    @app.task
    def flaky(*args: int) -> int:
        sig = current_signature()
        assert sig is not None
        tries.append(1)
        if len(tries) < 2:
            raise Retry(countdown=0.01)
        return sum(args)

    assert _run(app, lambda: app.send_chain(Chain([add.s(1, 1), flaky.s(2), add.s(3)]))) == 7
    spans = exporter.get_finished_spans()
    chain = [s for s in spans if s.name == "send chain"]
    assert len(chain) == 1
    trace_ids = {s.context.trace_id for s in spans}
    assert trace_ids == {chain[0].context.trace_id}, (
        "chain links and the retry must continue the chain's trace"
    )
    names = sorted(s.name for s in spans)
    assert names.count("flaky") == 2 and names.count("send flaky") == 2  # the run, the retry, both linked
    exporter.clear()

    chord = Chord(Group([add.s(1, 2), add.s(3, 4)]), add.s(10))
    assert _run(app, lambda: app.send_chord(chord)) == 20
    spans = exporter.get_finished_spans()
    assert {s.name for s in spans} >= {"send chord", "send group", "send add", "add"}
    assert len({s.context.trace_id for s in spans}) == 1, "the chord's members and its callback: one trace"
    chord_span = next(s for s in spans if s.name == "send chord")
    group_span = next(s for s in spans if s.name == "send group")
    assert group_span.parent is not None and group_span.parent.span_id == chord_span.context.span_id
