"""OpenTelemetry: a publish span and an execute span, linked through the message headers."""

from __future__ import annotations

import pytest

from machinery import Machinery

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace", reason="the [otel] test extra is not installed")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402


def test_execute_span_is_a_child_of_the_publish_span(app: Machinery) -> None:
    exporter = InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

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
