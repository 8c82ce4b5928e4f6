"""Plugin discovery through the ``machinery`` entry-point group."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from machinery import Config, Machinery, PluginNotFoundError
from machinery.plugins import FIRST_PARTY, get_plugin_manager, install_hint, list_schemes, resolve_broker

PLUGIN_MODULE = """
from machinery.transports.memory.broker import MemoryBroker
from machinery.transports.memory.backend import MemoryBackend
from machinery.plugins import SchemeRow, hookimpl


@hookimpl
def machinery_schemes():
    return [SchemeRow("acme", "broker", "machinery-acme"), SchemeRow("acme", "backend", "machinery-acme")]


@hookimpl
def machinery_broker(url, config):
    if url.startswith("acme://"):
        broker = MemoryBroker(config, name="acme")
        broker.claimed_by = "acme"
        return broker
    return None


@hookimpl
def machinery_backend(url, config):
    return MemoryBackend(config, name="acme") if url.startswith("acme://") else None
"""


@pytest.fixture
def third_party_plugin(tmp_path: Path) -> Iterator[None]:
    """Install a distribution 'machinery-acme' the way pip would: a module plus dist-info with
    an entry point in group 'machinery', found on sys.path."""
    (tmp_path / "machinery_acme.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    dist_info = tmp_path / "machinery_acme-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: machinery-acme\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[machinery]\nacme = machinery_acme\n")
    sys.path.insert(0, str(tmp_path))
    get_plugin_manager(refresh=True)
    yield
    sys.path.remove(str(tmp_path))
    sys.modules.pop("machinery_acme", None)
    get_plugin_manager(refresh=True)


def test_builtin_schemes_are_listed() -> None:
    rows = {(r.scheme, r.kind, r.distribution) for r in list_schemes()}
    for kind in ("broker", "backend", "lock"):
        assert ("memory", kind, "machinery-core") in rows
        assert ("sqlite", kind, "machinery-core") in rows


def test_third_party_entry_point_is_found_by_scheme(third_party_plugin: None) -> None:
    broker = resolve_broker("acme://anything", Config())
    assert getattr(broker, "claimed_by", None) == "acme"
    app = Machinery(Config(broker="acme://x", result_backend="acme://x"))

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    worker = app.worker(concurrency=1)
    thread = worker.launch_async()
    assert app.send_task(add.s(2, 3)).get(timeout=5) == 5
    worker.quit()
    thread.join(5)


def test_schemes_are_collected_from_every_plugin(third_party_plugin: None) -> None:
    rows = list_schemes()
    assert ("acme", "broker", "machinery-acme") in rows
    assert ("memory", "broker", "machinery-core") in rows


def test_unclaimed_url_lists_installed_schemes() -> None:
    with pytest.raises(PluginNotFoundError) as info:
        resolve_broker("zzz://host", Config())
    message = str(info.value)
    assert "zzz://" in message and "memory" in message and "sqlite" in message


@pytest.mark.parametrize(
    ("url", "package"),
    [
        ("redis://localhost:6379/0", "machinery-redis"),
        ("rediss://localhost:6379/0", "machinery-redis"),
        ("redis+socket:///tmp/redis.sock", "machinery-redis"),
        ("amqp://guest:guest@localhost:5672/", "machinery-amqp"),
        ("amqps://localhost:5671/", "machinery-amqp"),
        ("sqs://queue", "machinery-sqs"),
        ("https://sqs.us-east-1.amazonaws.com/123456789012", "machinery-sqs"),
        ("dynamodb://", "machinery-sqs"),
        ("mongodb://localhost:27017", "machinery-mongodb"),
        ("mongodb+srv://cluster.example.com", "machinery-mongodb"),
        ("memcache://h1:11211,h2:11211", "machinery-memcache"),
        ("gcppubsub://project/subscription", "machinery-gcppubsub"),
    ],
)
def test_first_party_scheme_names_its_package(url: str, package: str) -> None:
    assert install_hint(url) == f": pip install {package}"


def test_missing_first_party_plugin_error_names_the_package(uninstalled_scheme: str) -> None:
    missing = uninstalled_scheme
    assert missing not in {row.scheme for row in list_schemes()}
    with pytest.raises(PluginNotFoundError, match=f"pip install {FIRST_PARTY[missing]}"):
        resolve_broker(f"{missing}://host", Config())
