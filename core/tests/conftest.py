"""Shared fixtures for the core's unit tests: an isolated in-memory app per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from machinery import Config, Machinery


@pytest.fixture
def memory_url() -> str:
    """A memory:// URL private to one test (memory stores are shared by name)."""
    return f"memory://{uuid.uuid4().hex}"


@pytest.fixture
def app(memory_url: str) -> Iterator[Machinery]:
    config = Config(broker=memory_url, result_backend=memory_url)
    config.worker.shutdown_grace = 5.0
    config.worker.poll_timeout = 0.1  # workers stop within 0.1 s: faster teardowns
    application = Machinery(config)
    yield application
    application.close()


@pytest.fixture
def uninstalled_scheme() -> Iterator[str]:
    """``memcache``, with whichever installed plugin serves it unregistered for the test: the error for a
    first-party scheme whose package is missing, whatever this venv has installed."""
    from machinery.plugins import get_plugin_manager

    scheme = "memcache"
    manager = get_plugin_manager()
    removed = []
    for plugin in manager.get_plugins():
        hook = getattr(plugin, "machinery_schemes", None)
        if hook is not None and any(row[0] == scheme for row in hook()):
            removed.append((manager.get_name(plugin), plugin))
            manager.unregister(plugin)
    try:
        yield scheme
    finally:
        for name, plugin in removed:
            manager.register(plugin, name)
