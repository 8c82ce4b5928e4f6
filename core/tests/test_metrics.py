"""Prometheus metrics: a worker with a metrics port on sqlite, scraped over HTTP (issue 23)."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from machinery import Signature
from machinery.testing._util import eventually

from .events_testlib import running, sqlite_app

pytest.importorskip("prometheus_client")  # in the [test] extra: present wherever the suite runs


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of ``name{labels}`` in a Prometheus text exposition, None when absent."""
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return None


def test_worker_serves_task_counters_runtime_slots_and_depth(tmp_path: Path) -> None:
    app = sqlite_app(tmp_path)
    worker = app.worker(concurrency=3, metrics_port=0)
    with running(worker):
        port = eventually(lambda: worker.events.metrics is not None and worker.metrics_port, 10, "the server")
        results = [app.send_task(Signature("add", [i, 1])) for i in range(3)]
        failed = app.send_task(Signature("boom"))
        assert [r.get(timeout=10) for r in results] == [1, 2, 3]
        failed.wait_state(timeout=10)

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                return str(response.read().decode())

        def counted() -> str | None:
            text = scrape()
            return text if sample(text, "machinery_tasks_failed_total", task="boom") == 1 else None

        text = eventually(counted, 10, "the failed counter")
    q = app.config.default_queue
    assert sample(text, "machinery_tasks_succeeded_total", task="add", queue=q) == 3
    assert sample(text, "machinery_tasks_received_total", task="add", queue=q) == 3
    assert sample(text, "machinery_tasks_started_total", task="boom", queue=q) == 1
    assert sample(text, "machinery_task_runtime_seconds_count", task="add", queue=q) == 3
    assert sample(text, "machinery_tasks_retried_total", task="add", queue=q) is None  # none retried
    assert sample(text, "machinery_worker_busy_slots") is not None
    assert sample(text, "machinery_worker_free_slots") == 3 - (
        sample(text, "machinery_worker_busy_slots") or 0
    )
    assert sample(text, "machinery_queue_depth", queue=q) == 0
    with pytest.raises(OSError):  # stopped with the worker
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_queue_depth_where_the_broker_counts(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    from machinery.metrics import WorkerMetrics

    app = sqlite_app(tmp_path)
    app.broker.publish_many([Signature("add", [0, 0], routing_key="waiting") for _ in range(7)])
    metrics = WorkerMetrics(lambda: 2, 5, app.broker, ["waiting", "empty"])
    text = generate_latest(metrics.registry).decode()
    assert sample(text, "machinery_queue_depth", queue="waiting") == 7
    assert sample(text, "machinery_queue_depth", queue="empty") == 0
    assert (sample(text, "machinery_worker_busy_slots"), sample(text, "machinery_worker_free_slots")) == (
        2,
        3,
    )


def test_without_the_extra_nothing_is_imported_and_the_cli_says_what_to_install(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"  # as if not installed
        "from machinery import Config, Machinery\n"
        "from machinery.worker.emitter import NO_EVENTS\n"
        f"app = Machinery(Config(broker='sqlite:///{tmp_path}/x.db', result_backend='null'))\n"
        "w = app.worker()\n"
        "assert not w.events.active and w.events.metrics is None\n"
        "from click.testing import CliRunner\n"
        "from machinery.cli import cli\n"
        "r = CliRunner().invoke(cli, ['worker', '--metrics-port', '9808'])\n"
        "assert r.exit_code == 1, r.output\n"
        "print(r.output)\n"
        "import machinery.metrics\n"
        "assert 'prometheus_client' not in sys.modules or sys.modules['prometheus_client'] is None\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "--metrics-port needs prometheus-client: pip install 'machinery-core[metrics]'" in out.stdout
